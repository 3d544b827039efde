"""Training views: each sample's view drawn from (seed, shard, key, pass) (params), made into pixels (pixels: crop, flip, auto-augment, colour), random erasing, and mixup and cutmix (mixing)."""

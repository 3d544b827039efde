"""Data: shards, datasets, decoding, views and augmentation, the loaders and the store join."""

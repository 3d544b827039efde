"""A training loader batch -> the inputs of one training step, on the device.

    bytes or uint8 views --(--decode gpu: nvJPEG, crops, flips)--> normalised float images
      --(--reprob: each view's erasing box and noise)--> --(--mixup/--cutmix: images, targets, weak labels)-->
    {"image", "target", "weak", "dropped"}

Every random draw here comes from the views (erasing: a function of seed, shard, key and pass) or
from (seed, rank, step, micro-batch) (batch mixing), never from a global generator, so a resumed run
prepares exactly the inputs the uninterrupted one did. Replaying a per-view store's
mixed views, each sample comes with its partner's view and its mix (drawn per sample by the loading
processes: views/mixing.py), and is mixed here with `mixing.mix_pixels`.
"""

from __future__ import annotations

from ...errors import W2SError
from ..image.preprocess import DeviceNormalize
from ..loaders.shard_batches import LoadFailed
from ..views.mixing import finished_views, soft_targets
from ..views.pixels import DeviceAugment


class StepInputs:
    """`__call__(batch, step=, micro=)`: a batch of `train_loader.collate` -> the step's inputs.

    "target" is the ground truth where the run needs it (`need_labels`; soft targets under mixing),
    else None; "weak" the stored weak logits (float32 log-probabilities under mixing: the stored
    distributions mixed linearly, an approximation), or the online `teacher`'s logits on the final
    (erased, mixed) images, or None without either; "trust" the samples' stored --weight-by
    statistic (mixed by λ with their partners' under batch mixing), or None; "ids" the samples' ids
    (--ensemble learned-sample), or None; "dropped" how many
    samples --skip-missing left out since the last batch."""

    def __init__(self, data_config: dict, device, *, decoder: str, rank: int, need_labels: bool,
                 reprob: float = 0.0, mixer=None, teacher=None, num_classes: int = 0, smoothing: float = 0.0):
        self.device, self.rank, self.need_labels = device, rank, need_labels
        self.on_device = DeviceAugment(data_config, device) if decoder == "gpu" else None
        self.normalize = DeviceNormalize(data_config, device)
        self.erase = reprob > 0  # each view's box and noise are in its view row (params.View)
        self.mixer = mixer  # mixing.BatchMix, or None
        self.teacher = teacher  # train.teacher.OnlineTeacher, or None
        self.num_classes, self.smoothing = num_classes, smoothing  # for replayed mixing's soft targets

    def __call__(self, raw, *, step: int, micro: int = 0) -> dict:
        if isinstance(raw, LoadFailed):
            raise W2SError(raw.message)
        dropped = int(raw.pop("dropped"))  # a CPU tensor: no device wait
        keys, blobs, views_cpu, partner_views = raw.pop("key"), raw.pop("blobs", None), raw["view"], raw.pop(
            "partner_view", None)
        batch = {k: v.to(self.device, non_blocking=True) for k, v in raw.items()}
        # uint8 views from the loading processes, or bytes decoded and cropped here (--decode gpu);
        # normalised, erased and (a per-view store's mixed views, replayed: each with its own
        # partner, erased in its own pass, and λ) mixed as `label --views` made them
        pixels = self.on_device(blobs, batch["view"], keys) if blobs is not None else batch["image"]
        erase = (views_cpu, partner_views) if self.erase else (None, None)
        mixed = (batch["partner_image"], batch["mix"], erase[1]) if "mix" in batch else None
        image = finished_views(self.normalize, pixels, erase[0], mixed)
        if mixed is not None:
            target = soft_targets(batch["label"], batch["partner_label"], batch["mix"][:, 2], self.num_classes,
                                  self.smoothing) if self.need_labels else None
            return {"image": image, "target": target, "weak": batch.get("weak"), "trust": batch.get("trust"),
                    "ids": batch.get("ids"), "dropped": dropped}
        target, weak, trust = (batch["label"] if self.need_labels else None), batch.get("weak"), batch.get("trust")
        if self.mixer is not None:
            image, target, weak, lam = self.mixer(image, target, weak, rank=self.rank, step=step, micro=micro)
            if trust is not None:  # a mixed weak label's statistic: its two samples', mixed by λ
                trust = lam * trust + (1 - lam) * trust.flip(0)
        if self.teacher is not None:  # the weak model on the very pixels the student sees
            weak = self.teacher(image)
        return {"image": image, "target": target, "weak": weak, "trust": trust, "ids": batch.get("ids"),
                "dropped": dropped}

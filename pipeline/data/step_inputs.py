"""A training loader batch -> the inputs of one training step, on the device.

    bytes or uint8 views --(--decode gpu: nvJPEG, crops, flips)--> normalised float images
      --(--reprob: each view's erasing box)--> --(--mixup/--cutmix: images, targets, weak labels)-->
    {"image", "target", "weak", "dropped"}

Every random draw here comes from (seed, rank, step, micro-batch), never from a global generator, so
a resumed run prepares exactly the inputs the uninterrupted one did. Replaying a per-view store's
mixed views, each sample comes with its partner's view and its mix (drawn per sample by the loading
processes: mixviews.py), and is mixed here with `mixviews.mix_pixels`.
"""

from __future__ import annotations

from .loader import LoadFailed
from .views import view_seed
from ...errors import W2SError


class StepInputs:
    """`__call__(batch, step=, micro=)`: a batch of `train_loader.collate` -> the step's inputs.

    "target" is the ground truth where the run needs it (`need_labels`; soft targets under mixing),
    else None; "weak" the stored weak logits (float32 log-probabilities under mixing: the stored
    distributions mixed linearly, an approximation), or the online `teacher`'s logits on the final
    (erased, mixed) images, or None without either; "dropped" how many samples --skip-missing left
    out since the last batch."""

    def __init__(self, data_config: dict, device, *, decoder: str, seed: int, rank: int, need_labels: bool,
                 reprob: float = 0.0, mixer=None, teacher=None, num_classes: int = 0, smoothing: float = 0.0):
        import torch

        from .augment import DeviceAugment
        from .transforms import DeviceNormalize

        self.device, self.seed, self.rank, self.need_labels = device, seed, rank, need_labels
        self.on_device = DeviceAugment(data_config, device) if decoder == "gpu" else None
        self.normalize = DeviceNormalize(data_config, device)
        self.eraser = torch.Generator(device=device) if reprob else None
        self.mixer = mixer  # mixing.BatchMix, or None
        self.teacher = teacher  # train.teacher.OnlineTeacher, or None
        self.num_classes, self.smoothing = num_classes, smoothing  # for replayed mixing's soft targets

    def __call__(self, raw, *, step: int, micro: int = 0) -> dict:
        from .crops import erase_where

        if isinstance(raw, LoadFailed):
            raise W2SError(raw.message)
        dropped = int(raw.pop("dropped"))  # a CPU tensor: no device wait
        keys, blobs, views_cpu = raw.pop("key"), raw.pop("blobs", None), raw["view"]
        batch = {k: v.to(self.device, non_blocking=True) for k, v in raw.items()}
        # uint8 views from the loading processes, or bytes decoded and cropped here (--decode gpu)
        image = self.normalize(self.on_device(blobs, batch["view"], keys) if blobs is not None else batch["image"])
        if "mix" in batch:  # a per-view store's mixed views, replayed: each with its own partner and λ
            from .mixviews import mix_pixels, soft_targets

            image = mix_pixels(image, self.normalize(batch["partner_image"]), batch["mix"])
            target = soft_targets(batch["label"], batch["partner_label"], batch["mix"][:, 2], self.num_classes,
                                  self.smoothing) if self.need_labels else None
            return {"image": image, "target": target, "weak": batch.get("weak"), "dropped": dropped}
        if self.eraser is not None:
            self.eraser.manual_seed(view_seed(self.seed, "erase", f"{self.rank}.{micro}", step))
            image = erase_where(image, views_cpu, self.eraser)
        target, weak = (batch["label"] if self.need_labels else None), batch.get("weak")
        if self.mixer is not None:
            image, target, weak, _ = self.mixer(image, target, weak, rank=self.rank, step=step, micro=micro)
        if self.teacher is not None:  # the weak model on the very pixels the student sees
            weak = self.teacher(image)
        return {"image": image, "target": target, "weak": weak, "dropped": dropped}

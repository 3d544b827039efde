"""The online teacher (`train --teacher CHECKPOINT`): the weak model run on each batch's exact
inputs, as the paper's official code runs it (its mixup runs before its distiller), instead of
reading a store.

The student's inputs are its views after crop, flip, auto-augment, erasing and mixing, normalised
with the student's mean and std. The teacher sees the same pixels: the student's normalisation is
undone and the teacher's applied (one per-channel affine map), then the batch is resized to the
teacher's input size (its data config's interpolation, antialiased) where the two differ. It runs
in eval mode, under `inference_mode` and the run's autocast; its logits come back as float32, a
plain tensor the losses read like stored weak logits.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ...errors import W2SError
from ..models.build import load_model


class OnlineTeacher:
    def __init__(self, loaded, student_config: dict, device, autocast=None):
        """`loaded`: models.LoadedModel of the weak checkpoint; `student_config`: the student's
        data config (its mean and std are what the batch is normalised with)."""
        self.name, self.data_config = loaded.name, dict(loaded.data_config)
        self.model = loaded.model.to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.size = tuple(int(v) for v in self.data_config["input_size"][1:])
        self.interpolation = self.data_config.get("interpolation", "bilinear")
        if self.interpolation not in ("bilinear", "bicubic", "nearest", "area"):
            self.interpolation = "bilinear"  # torch's interpolate has no lanczos/hamming: the nearest kin
        view = (1, -1, 1, 1)

        def stats(config, key, default):
            return torch.tensor(config.get(key, default), dtype=torch.float32, device=device).view(view)

        mean_s, std_s = stats(student_config, "mean", (0.485, 0.456, 0.406)), stats(student_config, "std", (0.229, 0.224, 0.225))
        mean_t, std_t = stats(self.data_config, "mean", (0.485, 0.456, 0.406)), stats(self.data_config, "std", (0.229, 0.224, 0.225))
        # x_t = (x * std_s + mean_s - mean_t) / std_t: the same 0..1 pixels in the teacher's normalisation
        self.scale, self.shift = std_s / std_t, (mean_s - mean_t) / std_t
        self.identity = bool(torch.equal(self.scale, torch.ones_like(self.scale)) and not self.shift.any())
        self.autocast = autocast

    def inputs(self, images):
        """The student's batch (N, 3, h, w), normalised for the student -> the teacher's input."""
        x = images if self.identity else images * self.scale + self.shift
        if tuple(x.shape[-2:]) != self.size:
            kwargs = {"align_corners": False, "antialias": True} if self.interpolation in ("bilinear", "bicubic") else {}
            x = F.interpolate(x, size=self.size, mode=self.interpolation, **kwargs)
        return x

    def __call__(self, images):
        """float32 (N, C) logits of the teacher on `images`, outside autograd."""
        with torch.inference_mode(), self.autocast or contextlib.nullcontext():
            logits = self.model(self.inputs(images)).float()
        if not torch.isfinite(logits).all():
            raise W2SError(f"the teacher {self.name}'s logits are not finite on this batch; check the checkpoint, or "
                           "use --precision fp32")
        return logits.clone()  # a normal tensor: inference tensors cannot take part in autograd later


def load_teacher(checkpoint: str, model_name: str | None, num_classes: int | None):
    """The weak checkpoint as a models.LoadedModel: a checkpoint this tool wrote, or a timm state
    dict named by --teacher-model. Its classes must be the data's (None: shards without a manifest,
    whose classes are the teacher's)."""
    loaded = load_model(model_name, checkpoint=checkpoint, num_classes=num_classes, option="--teacher-model")
    if num_classes is not None and loaded.num_classes != num_classes:
        raise W2SError(f"--teacher {checkpoint} predicts {loaded.num_classes} classes but the data has {num_classes}",
                       option="--teacher")
    return loaded

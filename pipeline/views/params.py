"""Each training sample's augmented view is a function of (run seed, shard, key, pass), nothing else.

The seed of a view is a hash of those four values, and its numbers come from a counter-based
generator (Philox keyed by that hash: no state carried from one sample to the next), so a sample
gets the same crop and flip whatever the number of ranks, loading processes or the batch size, and
a resumed run redraws exactly what the uninterrupted run drew. `pass` counts the passes over the
data (the stream's epochs), so a sample's view changes from one pass to the next.

A view is plain data, `View`: the crop box in the decoded image's pixels, the flip, and the box that
random erasing (`--reprob`) fills with noise in the output's pixels, and the key of that noise (the
noise is a function of the key and the pixel: `crops.view_noise`, so a per-view store replays an
erased view to the pixel). Every image path applies the
same crop and flip (`--decode pil` with PIL, `cpu` with torchvision in the loading processes, `gpu`
batched on the device); the erasing is applied to the normalised batch on the device
(`erasing.erase_where`), and a batch carries its views as a tensor.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import get_worker_info


def view_seed(seed: int, shard: str, key: str, epoch: int) -> int:
    """A 63-bit seed for one sample's view in one pass."""
    text = f"{int(seed)}\0{shard}\0{key}\0{int(epoch)}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def seeded(fn, seed: int, *args):
    """fn(*args) with Python's, numpy's and torch's global CPU generators seeded with `seed`: timm's
    and torchvision's transforms draw from all three. In the main process (in-process loading) the
    generators are restored after, since the run's own draws (dropout, mixup) come from them; a
    loading process uses them for nothing else, and skips the save and restore (~80 us of the ~90)."""
    cpu = torch.default_generator  # torch.manual_seed would also seed every GPU: 100x slower
    saved = None if get_worker_info() is not None else (random.getstate(), np.random.get_state(), cpu.get_state())
    random.seed(seed)
    np.random.seed(seed % 2**32)
    cpu.manual_seed(seed)
    try:
        return fn(*args)
    finally:
        if saved is not None:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            cpu.set_state(saved[2])


# A view's numbers, in order: 10 crop attempts of (area, log-ratio, top, left), the flip, then
# whether to erase, 10 erasing attempts of (area, log-ratio, top, left), and the erasing noise's key.
ATTEMPTS = 10
DRAWS = 4 * ATTEMPTS + 1
ERASE_DRAWS = 1 + 4 * ATTEMPTS + 1
ERASE_KEYS = 1 << 24  # keys are exact in a float32 view row
VIEW_FIELDS = ("top", "left", "height", "width", "flip", "image_height", "image_width",
               "erase_top", "erase_left", "erase_height", "erase_width", "erase_key")


@dataclass(frozen=True)
class View:
    """Crop rows top..top+height-1 and columns left..left+width-1 of an image_height x image_width
    image, resize the crop to the output size, then mirror it if flip; then replace the output's
    erase_height x erase_width pixels at (erase_top, erase_left) with the noise of `erase_key` (none if
    erase_height is 0)."""

    top: int
    left: int
    height: int
    width: int
    flip: bool
    image_height: int
    image_width: int
    erase_top: int = 0
    erase_left: int = 0
    erase_height: int = 0
    erase_width: int = 0
    erase_key: int = 0

    def as_row(self) -> list[float]:
        return [float(getattr(self, f)) for f in VIEW_FIELDS]

    def box(self) -> tuple[float, float, float, float]:
        """(x1, y1, x2, y2) in continuous pixel coordinates (pixel k spans [k, k+1])."""
        return float(self.left), float(self.top), float(self.left + self.width), float(self.top + self.height)


def view_boxes(rows):
    """`View.box` and `View.flip` of a batch's (N, 12) view rows, as tensors: boxes (N, 4), flips (N,)."""
    top, left, height, width, flip = (rows[:, VIEW_FIELDS.index(f)]
                                      for f in ("top", "left", "height", "width", "flip"))
    return torch.stack([left, top, left + width, top + height], 1), flip > 0


@dataclass(frozen=True)
class TrainViews:
    """timm's RandomResizedCrop (area fraction `scale`, aspect ratio `ratio`, 10 attempts, then a
    centre crop) and a horizontal flip with probability `hflip`, drawn per sample; with `reprob`,
    timm's RandomErasing box (one box of 2-33% of the `size` output, aspect 0.3-3.3) with that
    probability."""

    seed: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    reprob: float = 0.0
    size: tuple[int, int] = (224, 224)  # the output's (height, width), where erasing happens

    def draw(self, shard: str, key: str, epoch: int, height: int, width: int) -> View:
        u = np.random.Generator(np.random.Philox(key=view_seed(self.seed, shard, key, epoch))).random(
            DRAWS + ERASE_DRAWS)  # the first DRAWS numbers do not depend on how many follow
        view = crop_box(u[:DRAWS], height, width, self.scale, self.ratio, flip=bool(u[DRAWS - 1] < self.hflip))
        if self.reprob and u[DRAWS] < self.reprob:
            box = erase_box(u[DRAWS + 1:], *self.size)
            if box:
                view = dataclasses.replace(view, **dict(zip(VIEW_FIELDS[7:11], box)),
                                           erase_key=int(u[DRAWS + ERASE_DRAWS - 1] * ERASE_KEYS))
        return view


def erase_box(u, height: int, width: int, area=(0.02, 1 / 3), aspect=(0.3, 1 / 0.3)) -> tuple | None:
    """timm's RandomErasing box (one box) for the uniforms `u` (4 per attempt): (top, left, h, w),
    or None when no attempt fits, as timm then erases nothing."""
    log_low, log_high = math.log(aspect[0]), math.log(aspect[1])
    for a in range(ATTEMPTS):
        ua, ur, ut, ul = u[4 * a: 4 * a + 4]
        target = (area[0] + (area[1] - area[0]) * ua) * height * width
        ratio = math.exp(log_low + (log_high - log_low) * ur)
        h, w = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
        if w < width and h < height:
            return min(int(ut * (height - h + 1)), height - h), min(int(ul * (width - w + 1)), width - w), h, w
    return None


def crop_box(u, height: int, width: int, scale, ratio, flip: bool = False) -> View:
    """The crop of RandomResizedCrop's algorithm for the uniforms `u` (DRAWS numbers in [0, 1))."""
    area = height * width
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for a in range(ATTEMPTS):
        ua, ur, ut, ul = u[4 * a: 4 * a + 4]
        target = area * (scale[0] + (scale[1] - scale[0]) * ua)
        aspect = math.exp(log_low + (log_high - log_low) * ur)
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            # uniform integers in [0, height - h] and [0, width - w], both ends included
            top, left = min(int(ut * (height - h + 1)), height - h), min(int(ul * (width - w + 1)), width - w)
            return View(top, left, h, w, flip, height, width)
    aspect = width / height  # no attempt fitted: the largest centred crop within the ratio range
    if aspect < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return View((height - h) // 2, (width - w) // 2, h, w, flip, height, width)

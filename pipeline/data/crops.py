"""Batched crop-and-resize on any device: many images of different sizes, one box each, one output
size, in a few kernel launches per batch instead of a few per image.

Images are grouped by size (portrait and landscape apart, then by area; a group is closed when
padding would waste more than half its pixels: an ImageNet batch makes 2 to 4 groups), each group is padded into one tensor, and torchvision's `roi_align` resamples every
box in it at once: bilinear samples averaged over each output pixel's footprint (ceil(box / out)
samples a side), which antialiases a downscale much as PIL's filters do. Within 1 grey level of
timm's PIL resize on smooth images, and under 1 on average on noisy ones (tests/test_crops.py).
The same code runs on CPU tensors, where CI tests it; on the CPU the loading processes use
torchvision's per-image resize instead, which is faster there.
"""

from __future__ import annotations

import math
import warnings

import torch


def size_groups(sizes: list[tuple[int, int]], waste: float = 0.5) -> list[list[int]]:
    """Indices grouped so that padding each group to its largest height and width wastes at most
    `waste` of the group's pixels (a group of one wastes nothing). Sorted by orientation, then area,
    so one 4000 x 3000 image in a batch pads only its own small group to its size."""
    order = sorted(range(len(sizes)), key=lambda i: (sizes[i][0] > sizes[i][1], sizes[i][0] * sizes[i][1]))
    groups, current, used, max_h, max_w = [], [], 0, 0, 0
    for i in order:
        h, w = sizes[i]
        nh, nw = max(max_h, h), max(max_w, w)
        turned = current and (h > w) != (sizes[current[0]][0] > sizes[current[0]][1])
        if current and (turned or nh * nw * (len(current) + 1) * (1 - waste) > used + h * w):
            groups.append(current)
            current, used, nh, nw = [], 0, h, w
        current.append(i)
        used += h * w
        max_h, max_w = nh, nw
    if current:
        groups.append(current)
    return groups


def resized_crops(images: list[torch.Tensor], boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """float32 (N, C, size) in the images' value range (0..255 for uint8 input).

    images: N tensors (C, H_i, W_i) on one device, any dtype; boxes: (N, 4) float (x1, y1, x2, y2)
    in continuous pixel coordinates (pixel k spans [k, k+1]) of each image.
    """
    from torchvision.ops import roi_align

    if not images:
        raise ValueError("no images")
    device = images[0].device
    out = torch.empty((len(images), images[0].shape[0], *size), dtype=torch.float32, device=device)
    boxes = boxes.to(device=device, dtype=torch.float32)
    for group in size_groups([tuple(im.shape[-2:]) for im in images]):
        if len(group) == 1:
            padded = images[group[0]].unsqueeze(0)
        else:
            with warnings.catch_warnings():  # the strided layout is the one that takes two ragged sizes
                warnings.filterwarnings("ignore", message="The PyTorch API of nested tensors is in prototype")
                padded = torch.nested.nested_tensor([images[i] for i in group]).to_padded_tensor(0)
        index = torch.as_tensor(group, device=device)
        rois = torch.cat([torch.arange(len(group), device=device, dtype=torch.float32)[:, None], boxes[index]], 1)
        # aligned=True: pixel centres at k + 0.5, as PIL and torchvision resize; sampling_ratio 0:
        # ceil(box / output) bilinear samples a side, averaged (the antialiasing).
        out[index] = roi_align(padded.float(), rois, output_size=size, spatial_scale=1.0, sampling_ratio=0,
                               aligned=True)
    return out


def flip_where(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror (left-right) the images (N, C, H, W) whose `flip` (N,) is true; one launch."""
    return torch.where(flip.to(images.device, torch.bool).view(-1, 1, 1, 1), images.flip(-1), images)


_MASK32 = 0xFFFFFFFF


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xor-shift-multiply rounds) of int64 values in [0, 2**32): every product
    stays under 2**63, so the result is exact and the same on every device."""
    for constant in (0x7FEB352D, 0x1B873593, 0x5BD1E995):
        x = ((x ^ (x >> 16)) * constant) & _MASK32
    return x ^ (x >> 15)


def view_noise(keys: torch.Tensor, shape: tuple[int, ...], device, dtype=torch.float32) -> torch.Tensor:
    """N(0, 1) noise (len(keys), *shape), a function of each view's erasing key (`View.erase_key`)
    and the element's position alone: Box-Muller on two 24-bit uniforms hashed from (key, position).
    So an erased view is the same pixels in `label --views` and in `train`, on any batch, rank or
    device (to float rounding)."""
    count = math.prod(shape)
    keys = keys.to(device=device, dtype=torch.int64)
    flat = torch.arange(count, device=device, dtype=torch.int64)
    owner = torch.arange(len(keys), device=device).repeat_interleave(count)
    return noise_at(keys[owner], flat.repeat(len(keys)), count).view(len(keys), *shape).to(dtype)


def noise_at(keys: torch.Tensor, flat: torch.Tensor, count: int) -> torch.Tensor:
    """`view_noise` at chosen elements: float32 (m,) for each element's view key and flat position
    in a view of `count` elements (only the erased pixels are computed: a fifth of a view on average)."""
    # both hashed before they meet: no two keys' noise is a shifted copy of the other's
    seeds = _hash32(keys.to(torch.int64) + 0x3C6EF372)
    u = [((_hash32(seeds ^ _hash32(flat + offset)) >> 8).to(torch.float32) + 0.5) / float(1 << 24)  # 24 bits: exact
         for offset in (0, count)]
    return torch.sqrt(-2 * torch.log(u[0])) * torch.cos(2 * math.pi * u[1])


def erase_where(images: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """timm's RandomErasing in its `pixel` mode, batched: each image's erase box (the view rows'
    erase_* fields; none where erase_height is 0) filled with N(0, 1) noise per pixel and channel,
    the noise of the view's erase_key (`view_noise`, computed inside the boxes only). `images` are
    normalised (N, C, H, W) and changed in place; `rows` are the batch's view rows on the CPU, so
    choosing the images with a box costs the device no wait. Noise is made for those images only (a
    quarter of the batch at --reprob 0.25)."""
    from .views import VIEW_FIELDS

    rows = rows.cpu()
    chosen = (rows[:, VIEW_FIELDS.index("erase_height")] > 0).nonzero().flatten()
    if len(chosen) == 0:
        return images
    device = images.device
    top, left, height, width = (rows[chosen, VIEW_FIELDS.index(f)].to(device).view(-1, 1, 1)
                                for f in ("erase_top", "erase_left", "erase_height", "erase_width"))
    ys = torch.arange(images.shape[-2], device=device).view(1, -1, 1)
    xs = torch.arange(images.shape[-1], device=device).view(1, 1, -1)
    inside = (ys >= top) & (ys < top + height) & (xs >= left) & (xs < left + width)
    index = chosen.to(device)
    c, h, w = images.shape[1:]
    mask = inside.unsqueeze(1).expand(-1, c, -1, -1)
    view, channel, y, x = mask.nonzero(as_tuple=True)
    keys = rows[chosen, VIEW_FIELDS.index("erase_key")].round().to(device=device, dtype=torch.int64)
    part = images[index]
    part[mask] = noise_at(keys[view], (channel * h + y) * w + x, c * h * w).to(images.dtype)
    images[index] = part
    return images

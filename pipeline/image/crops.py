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

import warnings

import torch
from torchvision.ops import roi_align


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

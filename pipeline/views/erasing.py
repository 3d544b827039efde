"""Random erasing (timm's pixel mode), batched: each view's erase box filled with noise that is a function of the view alone, so `label --views` and `train` erase the same pixels."""

from __future__ import annotations

import math

import torch

from .params import VIEW_FIELDS

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

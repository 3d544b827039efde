"""timm's eval preprocessing of a decoded image: the model's data config, its resize and centre
crop (uint8 tensors, in the loading processes), and normalisation on the device."""

from __future__ import annotations

import importlib
from functools import partial

import timm.data
import torch
from timm.data.transforms import MaybePILToTensor
from torchvision import transforms as v1
from torchvision.transforms.v2 import functional as F

from ...errors import W2SError
from .decode import decode_tensor, image_payload, pil_rgb

# Keys of timm's data config that define preprocessing; recorded in the store.
DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def data_config_for(model, img_size: int | None = None) -> dict:
    """timm's eval data config for `model`, with the input size overridden when asked.

    Never hard-coded: resnet18's default weights use crop_pct 0.95 and bicubic resizing, and a
    ViT built for 32 px still reports 224 in its config, hence the explicit override.
    """
    config = timm.data.resolve_data_config(model=model)
    if img_size:
        config["input_size"] = (3, int(img_size), int(img_size))
    return {k: _plain(config[k]) for k in DATA_CONFIG_KEYS if k in config}


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _timm_config(data_config: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in data_config.items() if k in DATA_CONFIG_KEYS}


def eval_transform(data_config: dict):
    """timm's full eval transform (PIL in, normalised float tensor out): the reference."""
    return timm.data.create_transform(**_timm_config(data_config), is_training=False)


def eval_geometry(data_config: dict):
    """timm's eval transform without the float conversion and normalisation: resize and crop,
    uint8 tensor out. Takes a PIL image or a (3, H, W) uint8 tensor."""
    return timm.data.create_transform(**_timm_config(data_config), is_training=False, use_prefetcher=True)


class TensorGeometry:
    """timm's eval resize and crop, applied to a uint8 (3, H, W) tensor with torchvision's v2 kernels.

    The sizes and interpolation are read from timm's own transform, so the geometry is timm's. v2
    resizes uint8 directly (8x faster than the v1 transforms timm builds, which go through float:
    0.38 against 3.0 ms for 500x375 -> 235 px bicubic on one core); anything else timm adds is
    applied as it is.
    """

    def __init__(self, data_config: dict):
        importlib.import_module("torchvision.io")  # here, so that forked loading processes inherit it
        self.steps, self.resize, self.crop, self.other = [], None, None, []
        for step in eval_geometry(data_config).transforms:
            if isinstance(step, v1.Resize):
                size = [step.size] if isinstance(step.size, int) else list(step.size)
                self.resize = (size, step.max_size)
                step = partial(F.resize, size=size, interpolation=step.interpolation, max_size=step.max_size,
                               antialias=True)
            elif isinstance(step, v1.CenterCrop):
                self.crop = list(step.size)
                step = partial(F.center_crop, output_size=list(step.size))
            elif isinstance(step, MaybePILToTensor):
                continue
            else:
                self.other.append(type(step).__name__)
            self.steps.append(step)

    def __call__(self, x):
        for step in self.steps:
            x = step(x)
        return x

    @property
    def output_size(self) -> tuple[int, int]:
        return tuple(self.crop)

    def box(self, height: int, width: int) -> tuple[float, float, float, float]:
        """The region of a height x width image that the resize and centre crop keep, as (x1, y1, x2,
        y2) in its own pixel coordinates: resizing that box straight to the output size is the same
        geometry in one resampling (crops.resized_crops does it for a whole batch)."""
        if self.other or self.resize is None or self.crop is None:
            raise W2SError(f"this preprocessing ({', '.join(self.other) or 'no resize and centre crop'}) has no "
                           "single crop box; use --decode cpu")
        size, max_size = self.resize
        if len(size) == 2:
            rh, rw = size
        else:  # the shorter side to size, the longer in proportion, as torchvision computes it
            short, long = sorted((height, width))
            new_short, new_long = size[0], int(size[0] * long / short)
            if max_size is not None and new_long > max_size:
                new_short, new_long = int(max_size * new_short / new_long), max_size
            rh, rw = (new_short, new_long) if height <= width else (new_long, new_short)
        ch, cw = self.crop
        top, left = int(round((rh - ch) / 2.0)), int(round((rw - cw) / 2.0))
        sy, sx = height / rh, width / rw
        return left * sx, top * sy, (left + cw) * sx, (top + ch) * sy


class Preprocess:
    """A worker's per-sample step: sample -> uint8 (3, H, W) crop, or the raw bytes under gpu. In two
    parts where the decoded image serves more (`label --views`): `decode`, then `crop`."""

    def __init__(self, data_config: dict, decoder: str = "cpu"):
        # `decoder` is resolved (decode.resolve_decoder): gpu only for a plain crop box.
        self.decoder = decoder
        # timm's border mode pads with a per-channel fill that torchvision's tensor pad refuses.
        self.tensor_route = decoder == "cpu" and data_config.get("crop_mode") != "border"
        self.geometry = TensorGeometry(data_config) if self.tensor_route else eval_geometry(data_config)

    def __call__(self, sample: dict, image_fields: tuple[str, ...], shard: str):
        image = self.decode(sample, image_fields, shard)
        return image if self.decoder == "gpu" else self.crop(image)

    def decode(self, sample: dict, image_fields: tuple[str, ...], shard: str):
        """The sample's image: a uint8 (3, H, W) tensor (cpu), an RGB PIL image (pil, or timm's border
        mode), or its encoded bytes (gpu). A bad image is a one-line error naming shard and key."""
        name, data = image_payload(sample, image_fields, shard)
        if self.decoder == "gpu":
            return data
        where = f"shard {shard}, key {sample.get('__key__')!r}: cannot decode {name!r}"
        return decode_tensor(data, where) if self.tensor_route else pil_rgb(data, where)

    def crop(self, image):
        """timm's eval resize and centre crop of a decoded image: uint8 (3, H, W)."""
        return self.geometry(image)


class DeviceNormalize:
    """uint8 (N, 3, H, W) batch -> float32 normalised with the model's mean and std, on `device`.
    Equal to timm's ToTensor + Normalize up to float rounding."""

    def __init__(self, data_config: dict, device):
        mean = data_config.get("mean", (0.485, 0.456, 0.406))
        std = data_config.get("std", (0.229, 0.224, 0.225))
        self.shift = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255
        self.scale = 1.0 / (torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255)
        self.device = device

    def __call__(self, x):
        x = x.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return (x.float() - self.shift) * self.scale

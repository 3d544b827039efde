"""Decoding a WebDataset sample and timm's preprocessing for it.

Workers turn each image into a uint8 crop (decode, resize, crop: timm's eval geometry); the
float conversion and normalisation happen on the device, batched (`DeviceNormalize`). A uint8
batch is a quarter of a float one through shared memory and across PCIe.

Decoders (`--decode`; auto picks gpu where CUDA is, else cpu):
  cpu  libjpeg-turbo/libpng through torchvision, resized as tensors in the loading processes (2.7x
       less CPU per ImageNet-sized JPEG than pil, measured in bench/decode_cost.py)
  pil  PIL decoding and PIL resizing: timm's reference eval transform, to the pixel (cpu is within
       one grey level of it)
  gpu  the workers only read bytes; each batch's JPEGs are decoded on the device (nvJPEG) in one
       call and resized in a few batched launches (`decode_batch`, `crops.resized_crops`)
"""

from __future__ import annotations

import io
import warnings
from typing import Callable

from ...errors import W2SError

# Keys of timm's data config that define preprocessing; recorded in the store.
DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
JPEG_MAGIC = b"\xff\xd8\xff"


def image_payload(sample: dict, image_fields: tuple[str, ...], shard: str) -> tuple[str, bytes]:
    """(field, bytes) of the sample's image; the error names shard, key and the fields present."""
    for name in image_fields:
        data = sample.get(name)
        if data is not None:
            return name, data
    present = sorted(k for k in sample if not k.startswith("__"))
    raise W2SError(
        f"shard {shard}, key {sample.get('__key__')!r}: no image field {'/'.join(image_fields)} (has {', '.join(present) or 'nothing'})"
    )


def pil_rgb(data: bytes, where: str):
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as exc:  # PIL raises many types for bad payloads
        raise W2SError(f"{where} ({exc})") from None
    return image.convert("RGB")


def decode_image(sample: dict, image_fields: tuple[str, ...], shard: str):
    """The sample's image as an RGB PIL image; the error names shard, key and reason."""
    name, data = image_payload(sample, image_fields, shard)
    return pil_rgb(data, f"shard {shard}, key {sample.get('__key__')!r}: cannot decode {name!r}")


def quiet_torchvision() -> None:
    """torchvision 0.29 deprecates its image decoders in favour of TorchCodec's and warns on every
    call; frombuffer warns that the bytes are read-only, and nothing writes to them."""
    warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision")
    warnings.filterwarnings("ignore", message="The given buffer is not writable")


def decode_tensor(data: bytes, where: str):
    """(3, H, W) uint8 RGB. torchvision's decoders (JPEG, PNG, WebP, GIF) first; PIL for anything
    they refuse (TIFF, BMP, odd JPEGs), so an image PIL reads is never lost. `where` prefixes the error."""
    import torch

    try:
        from torchvision.io import ImageReadMode, decode_image as tv_decode

        quiet_torchvision()
        return tv_decode(torch.frombuffer(data, dtype=torch.uint8), mode=ImageReadMode.RGB)
    except (ImportError, RuntimeError, ValueError):
        pass  # a torchvision without its decoders, or an image it refuses: PIL decides
    return pil_to_tensor(pil_rgb(data, where))


def pil_to_tensor(image):
    """An RGB PIL image as a uint8 (3, H, W) tensor."""
    import numpy as np
    import torch

    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous()


def decode_label(sample: dict, label_field: str | None, shard: str, required: bool) -> int | None:
    data = sample.get(label_field) if label_field else None
    if data is None:
        if required:
            raise W2SError(f"shard {shard}, key {sample.get('__key__')!r}: no label field {label_field!r}")
        return None
    try:
        return int(data.decode("utf-8").strip() if isinstance(data, bytes) else data)
    except (ValueError, UnicodeDecodeError):
        raise W2SError(f"shard {shard}, key {sample.get('__key__')!r}: label {label_field!r} is not an integer ({data[:20]!r})") from None


def data_config_for(model, img_size: int | None = None) -> dict:
    """timm's eval data config for `model`, with the input size overridden when asked.

    Never hard-coded: resnet18's default weights use crop_pct 0.95 and bicubic resizing, and a
    ViT built for 32 px still reports 224 in its config, hence the explicit override.
    """
    import timm.data

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
    import timm.data

    return timm.data.create_transform(**_timm_config(data_config), is_training=False)


def eval_geometry(data_config: dict):
    """timm's eval transform without the float conversion and normalisation: resize and crop,
    uint8 tensor out. Takes a PIL image or a (3, H, W) uint8 tensor."""
    import timm.data

    return timm.data.create_transform(**_timm_config(data_config), is_training=False, use_prefetcher=True)


class TensorGeometry:
    """timm's eval resize and crop, applied to a uint8 (3, H, W) tensor with torchvision's v2 kernels.

    The sizes and interpolation are read from timm's own transform, so the geometry is timm's. v2
    resizes uint8 directly (8x faster than the v1 transforms timm builds, which go through float:
    0.38 against 3.0 ms for 500x375 -> 235 px bicubic on one core); anything else timm adds is
    applied as it is.
    """

    def __init__(self, data_config: dict):
        import importlib
        from functools import partial

        from timm.data.transforms import MaybePILToTensor
        from torchvision import transforms as v1
        from torchvision.transforms.v2 import functional as F

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
        # `decoder` is resolved (decoders.resolve_decoder): gpu only for a plain crop box.
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
        import torch

        mean = data_config.get("mean", (0.485, 0.456, 0.406))
        std = data_config.get("std", (0.229, 0.224, 0.225))
        self.shift = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255
        self.scale = 1.0 / (torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255)
        self.device = device

    def __call__(self, x):
        import torch

        x = x.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return (x.float() - self.shift) * self.scale


def decode_images(blobs: list[bytes], device, where: Callable[[int], str]) -> tuple[list, dict[int, str]]:
    """Decode a batch of images on `device`: every JPEG in one batched nvJPEG call on a GPU (or
    torchvision's CPU decoder on CPU tensors), anything else (PNG, a JPEG the batched call refuses)
    one by one through `decode_tensor`, then PIL.

    Returns (images, bad): uint8 (3, H_i, W_i) tensors on `device`, None where image i could not be
    decoded, and bad mapping such a position to its error, prefixed with `where(i)` (a function, so
    that no string is built per image unless one fails).
    """
    import torch

    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        raise W2SError("--decode gpu needs torchvision's decode_jpeg, which this torchvision lacks; use --decode cpu") from None
    quiet_torchvision()
    images: list = [None] * len(blobs)
    bad: dict[int, str] = {}
    jpegs = [i for i, b in enumerate(blobs) if b[:3] == JPEG_MAGIC]
    if jpegs and device.type == "cuda":
        # A host barrier first. torchvision's CUDA decode_jpeg decodes on a stream of its own, never
        # ordered after ours, and nvJPEG's hardware engine writes its outputs when called: into
        # memory the caching allocator already handed back but that our queued kernels (the last
        # step's forward and backward) still read, which silently corrupts them (pytorch/vision
        # #9606, meta-pytorch/torchcodec #1634; seen on H100/H200, not on A100). This was the
        # GPU runs' non-finite loss (bench/README.md). Draining the device before decoding is the
        # only ordering that holds: a device-side wait on an event does not gate those writes.
        torch.cuda.synchronize(device)
    if jpegs:
        # Read-only views of the bytes (no copy per image): nvJPEG only reads them.
        data = [torch.frombuffer(blobs[i], dtype=torch.uint8) for i in jpegs]
        try:
            for i, image in zip(jpegs, decode_jpeg(data, mode=ImageReadMode.RGB, device=device)):
                images[i] = image
        except RuntimeError:  # one bad or unsupported JPEG fails the whole call: one by one instead
            for i, one in zip(jpegs, data):
                try:
                    images[i] = decode_jpeg(one, mode=ImageReadMode.RGB, device=device)
                except RuntimeError:
                    pass  # decode_tensor below: the CPU decoders, then PIL, then a named error
    for i, blob in enumerate(blobs):
        if images[i] is None:
            try:
                images[i] = decode_tensor(blob, where(i)).to(device)
            except W2SError as exc:
                bad[i] = str(exc)
    return images, bad


def decode_batch(blobs: list[bytes], geometry: "TensorGeometry", device, where: Callable[[int], str]):
    """Decode a batch (`decode_images`) and apply timm's eval resize and crop to all of it at once
    (`crops.resized_crops` over each image's crop box).

    Returns (float32 (n, 3, H, W) in 0..255 on `device`, bad): n images, those not in bad.
    """
    import torch

    from .crops import resized_crops

    images, bad = decode_images(blobs, device, where)
    good = [images[i] for i in range(len(blobs)) if i not in bad]
    if not good:
        return None, bad
    boxes = torch.tensor([geometry.box(*im.shape[-2:]) for im in good], dtype=torch.float32)
    return resized_crops(good, boxes, geometry.output_size), bad

"""Decoding a WebDataset sample's image and label, and which decoder a run uses (`--decode`,
decided and checked once in `resolve_decoder`; everything downstream trusts the resolved name).

    cpu  libjpeg-turbo/libpng through torchvision in the loading processes, resized as uint8 tensors
         there (2.7x less CPU per ImageNet-sized JPEG than pil: bench/decode_cost.py)
    pil  PIL decoding and PIL resizing in the loading processes: timm's reference eval transform, to
         the pixel (cpu is within one grey level of it)
    gpu  the loading processes only read bytes; each batch's JPEGs are decoded on the device (nvJPEG)
         in one call and resized in a few batched launches (`decode_batch`, `crops.resized_crops`)
"""

from __future__ import annotations

import functools
import io
import os
import warnings
from typing import Callable

import numpy as np
import torch
from PIL import Image

from ...errors import W2SError
from ..config.choices import DECODE_OPTIONS, check_choice
from .crops import resized_crops

JPEG_MAGIC = b"\xff\xd8\xff"
# The most pixels an image may declare in its header: PIL's own refusal point (twice its warning limit),
# which ImageNet's and LAION's largest photographs pass; --max-image-pixels (limit_pixels) lowers it. A
# header over it is refused before any decoder allocates the image (a decompression bomb).
PIL_REFUSES = 2 * Image.MAX_IMAGE_PIXELS
LIMIT_ENV = "W2S_MAX_IMAGE_PIXELS"  # the limit, where a stage set it: the loading processes take the
# stage's environment as they start (loaders/workers.py's WorkerStart), whatever the fork server had


def limit_pixels(limit: int | None) -> None:
    """Set the most pixels an image may declare (None: PIL's refusal point) for this stage: in this
    process and the loading processes it starts from now on."""
    os.environ[LIMIT_ENV] = str(min(limit or PIL_REFUSES, PIL_REFUSES))


def pixel_limited(stage):
    """`stage(cfg)` (label, train, eval) run under its cfg.max_image_pixels (`limit_pixels`)."""
    @functools.wraps(stage)
    def run(cfg, *args, **kwargs):
        limit_pixels(cfg.max_image_pixels)
        return stage(cfg, *args, **kwargs)
    return run


def max_image_pixels() -> int:
    """The most pixels an image may declare here: the stage's --max-image-pixels, or PIL_REFUSES."""
    return min(int(os.environ.get(LIMIT_ENV) or PIL_REFUSES), PIL_REFUSES)


def check_declared(data: bytes, where: str) -> None:
    """Refuse, in one line prefixed with `where`, an empty payload or an image whose header declares
    more than max_image_pixels() pixels: read from the header alone (PIL's lazy open), before any of the
    decoders (PIL, torchvision's, nvJPEG) allocates it. A header PIL cannot read is left to the
    decoders, which name their own failure."""
    if len(data) == 0:
        raise W2SError(f"{where} (an empty file: 0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
    except Image.DecompressionBombError as exc:
        raise W2SError(f"{where} ({exc.args[0].split(',')[0]}: refused before decoding)") from None
    except Exception:  # PIL raises many types for a header it cannot read
        return
    if width * height > (limit := max_image_pixels()):
        raise W2SError(f"{where} (its header declares {width} x {height} = {width * height:,} pixels, over the limit "
                       f"of {limit:,} (--max-image-pixels): refused before decoding)")


def image_payload(sample: dict, image_fields: tuple[str, ...], shard: str) -> tuple[str, bytes]:
    """(field, bytes) of the sample's image, its declared size checked (`check_declared`: every decode
    path reads the image through here); the error names shard, key and the fields present."""
    for name in image_fields:
        data = sample.get(name)
        if data is not None:
            check_declared(data, f"shard {shard}, key {sample.get('__key__')!r}: cannot decode {name!r}")
            return name, data
    present = sorted(k for k in sample if not k.startswith("__"))
    raise W2SError(
        f"shard {shard}, key {sample.get('__key__')!r}: no image field {'/'.join(image_fields)} (has {', '.join(present) or 'nothing'})"
    )


def pil_rgb(data: bytes, where: str):
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
    try:
        from torchvision.io import ImageReadMode
        from torchvision.io import decode_image as tv_decode

        quiet_torchvision()
        return tv_decode(torch.frombuffer(data, dtype=torch.uint8), mode=ImageReadMode.RGB)
    except (ImportError, RuntimeError, ValueError):
        pass  # a torchvision without its decoders, or an image it refuses: PIL decides
    return pil_to_tensor(pil_rgb(data, where))


def pil_to_tensor(image):
    """An RGB PIL image as a uint8 (3, H, W) tensor."""
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


def decode_images(blobs: list[bytes], device, where: Callable[[int], str]) -> tuple[list, dict[int, str]]:
    """Decode a batch of images on `device`: every JPEG in one batched nvJPEG call on a GPU (or
    torchvision's CPU decoder on CPU tensors), anything else (PNG, a JPEG the batched call refuses)
    one by one through `decode_tensor`, then PIL.

    Returns (images, bad): uint8 (3, H_i, W_i) tensors on `device`, None where image i could not be
    decoded, and bad mapping such a position to its error, prefixed with `where(i)` (a function, so
    that no string is built per image unless one fails).
    """
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        raise W2SError("--decode gpu needs torchvision's decode_jpeg, which this torchvision lacks; use --decode cpu",
                       option="--decode") from None
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


def decode_batch(blobs: list[bytes], geometry, device, where: Callable[[int], str]):
    """Decode a batch (`decode_images`) and apply timm's eval resize and crop to all of it at once
    (`crops.resized_crops` over each image's crop box, from `geometry`, a preprocess.TensorGeometry).

    Returns (float32 (n, 3, H, W) in 0..255 on `device`, bad): n images, those not in bad.
    """
    images, bad = decode_images(blobs, device, where)
    good = [images[i] for i in range(len(blobs)) if i not in bad]
    if not good:
        return None, bad
    boxes = torch.tensor([geometry.box(*im.shape[-2:]) for im in good], dtype=torch.float32)
    return resized_crops(good, boxes, geometry.output_size), bad


def resolve_decoder(requested: str, device, *, loading_only: tuple[str, ...] = (), border_crop: bool = False) -> str:
    """The decoder for `requested` (one of `choices.DECODE_OPTIONS`) on `device`.

    `auto` is the device path where there is a CUDA device, else cpu; it is also cpu when the run
    has augmentation that only the loading processes apply (`loading_only`: the options that ask
    for it, such as ("--aa",)) or a crop that is not a plain box (`border_crop`: timm's crop_mode
    'border' pads). An explicit `gpu` that cannot work is a one-line error saying what would.
    """
    check_choice("--decode", requested, DECODE_OPTIONS)
    if requested == "auto":
        return "gpu" if device.type == "cuda" and not loading_only and not border_crop else "cpu"
    if requested == "gpu":
        if device.type != "cuda":
            raise W2SError(f"--decode gpu needs a CUDA device, and this run is on {device}; use --decode cpu",
                           option="--decode")
        if loading_only:
            raise W2SError(f"{loading_only[0]} is applied in the loading processes: use --decode cpu or pil with it")
        if border_crop:
            raise W2SError("--decode gpu cannot apply crop_mode 'border' (padding); use --decode cpu",
                           option="--decode")
    return requested

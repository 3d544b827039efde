"""Which decoder a run uses (`--decode`), decided and checked in one place.

    cpu  libjpeg-turbo/libpng through torchvision in the loading processes, uint8 tensor resizing
    pil  PIL decoding and resizing in the loading processes: timm's reference, to the pixel
    gpu  the loading processes only read bytes; each batch is decoded (nvJPEG) and cropped on the
         device in a few launches

Everything downstream (`transforms.Preprocess`, `augment.TrainAugment`, the device paths) takes a
decoder resolved here and trusts it. Imports nothing heavy.
"""

from __future__ import annotations

from ...errors import W2SError
from ..choices import DECODE_OPTIONS, check_choice


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
            raise W2SError(f"--decode gpu needs a CUDA device, and this run is on {device}; use --decode cpu")
        if loading_only:
            raise W2SError(f"{loading_only[0]} is applied in the loading processes: use --decode cpu or pil with it")
        if border_crop:
            raise W2SError("--decode gpu cannot apply crop_mode 'border' (padding); use --decode cpu")
    return requested

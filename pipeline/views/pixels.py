"""Training views: each sample's crop and flip (`params.View`) applied where the decoder says.

    pil  the loading processes decode with PIL and crop, resize and flip with PIL: timm's
         RandomResizedCrop + flip for the given view, to the pixel
    cpu  the loading processes decode with libjpeg-turbo through torchvision and crop, resize
         (uint8, antialiased) and flip tensors: within 2 grey levels of pil for the same view
    gpu  the loading processes only read the image's size from its header and draw its view; the
         main process decodes the batch (nvJPEG) and crops, resizes and flips it on the device in
         a few launches (`DeviceAugment`, `crops.resized_crops`)

All three ship uint8 (or bytes) and normalise on the device, and draw the same view for a sample.
timm's auto-augment policies (`--aa`: AutoAugment, RandAugment, AugMix) and colour jitter work on
PIL images, so they run in the loading processes after the crop and flip (timm's order), seeded per
sample from (seed, shard, key, pass): with them `auto` picks the cpu path, and gpu refuses them.
"""

from __future__ import annotations

import io

import torch
from PIL import Image
from timm.data import auto_augment
from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform
from timm.data.transforms import str_to_interp_mode, str_to_pil_interp
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ...errors import W2SError
from ..image.crops import flip_where, resized_crops
from ..image.decode import decode_images, decode_tensor, image_payload, pil_rgb, pil_to_tensor, quiet_torchvision
from .mixing import MixRecipe, plan
from .params import TrainViews, View, seeded, view_boxes, view_seed


def _check_interpolation(name: str) -> None:
    """timm's names (its `str_to_interp_mode` and `str_to_pil_interp` convert them); refuse others now,
    not in a loading process."""
    try:
        str_to_interp_mode(name), str_to_pil_interp(name)
    except KeyError:
        raise W2SError(f"interpolation {name!r} of the model's data config is not supported here") from None


class TrainAugment:
    """A loading process's per-sample step: encoded sample -> (uint8 (3, H, W) view, or the raw
    bytes under gpu; its `View`). `decoder` is resolved (decode.resolve_decoder: gpu never comes
    with --aa or --color-jitter) and the options are checked (TrainConfig: not both at once)."""

    def __init__(self, data_config: dict, views: TrainViews, decoder: str, color_jitter: float = 0.0,
                 auto_augment: str | None = None):
        self.views, self.decoder = views, decoder
        self.size = tuple(int(v) for v in data_config["input_size"][1:])
        self.interpolation = data_config.get("interpolation", "bilinear")
        _check_interpolation(self.interpolation)
        self.jitter = None
        if color_jitter:
            # timm's training recipe: brightness, contrast and saturation, no hue.
            self.jitter = v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter)
        self.policy = auto_augment_policy(auto_augment, data_config) if auto_augment else None

    def __call__(self, sample: dict, image_fields: tuple[str, ...], shard: str, epoch: int):
        field, data = image_payload(sample, image_fields, shard)
        key = sample["__key__"]
        where = f"shard {shard}, key {key!r}: cannot decode {field!r}"
        if self.decoder == "gpu":
            height, width = header_size(data, where)
            return data, self.views.draw(shard, key, epoch, height, width)
        image = pil_rgb(data, where) if self.decoder == "pil" else decode_tensor(data, where)
        return self.view_of(image, shard, key, epoch)

    def view_of(self, image, shard: str, key: str, epoch: int):
        """A decoded image (PIL under pil, a uint8 (3, H, W) tensor under cpu) -> its view of pass
        `epoch`: (uint8 (3, H, W), View). The crop and flip, then --aa and --color-jitter, each drawn
        from (seed, shard, key, pass)."""
        seed = view_seed(self.views.seed, shard, key, epoch)
        if self.decoder == "pil":
            view = self.views.draw(shard, key, epoch, image.height, image.width)
            crop = pil_crop(image, view, self.size, self.interpolation)
            if self.policy is not None:  # on the PIL crop itself: no round trip through a tensor
                crop = seeded(self.policy, seed ^ 0xAA, crop)
            out = pil_to_tensor(crop)
        else:
            view = self.views.draw(shard, key, epoch, *image.shape[-2:])
            out = tensor_view(image, view, self.size, self.interpolation)
            if self.policy is not None:
                out = seeded(_on_pil, seed ^ 0xAA, self.policy, out)
        if self.jitter is not None:
            out = seeded(self.jitter, seed ^ 0x5EED, out)
        return out, view


class LabelViews:
    """A loading process's step for `label --views K`: a sample's decoded image -> the K training
    views `train` draws in passes 0..K-1 with the same seed and recipe (`augment`, a TrainAugment
    at the weak model's input size: crop, flip, --aa, --color-jitter), each exactly as
    `TrainAugment` makes it: uint8 (K, 3, H, W) and the views as rows (K, 12) (`params.VIEW_FIELDS`).

    With a mixing recipe (`mix`, a mixing.MixRecipe) each view is mixed as `train` will mix it:
    the third item is then (the partners' views uint8 (K, 3, H, W), the mixes' rows (K, 7) at this
    size, the partners' positions (K,), the drawn λ (K,), the partners' view rows (K, 12)); the
    erasing and mixing themselves happen on the device (`mixing.finished_views`), as in `train`."""

    def __init__(self, augment: TrainAugment, k: int, mix=None):
        self.augment, self.k, self.mix = augment, k, mix

    @classmethod
    def from_recipe(cls, recipe: dict, seed: int, k: int, data_config: dict, decoder: str) -> "LabelViews":
        """The views `train --seed seed` draws in passes 0..k-1 with a store's view recipe
        (config.groups.ViewRecipe.recipe, as storage.schema.views_meta completes it), at `data_config`'s input size."""
        size = tuple(int(v) for v in data_config["input_size"][1:])
        views = TrainViews(seed, scale=(recipe["crop_scale"], 1.0), ratio=tuple(recipe["ratio"]), hflip=recipe["hflip"],
                           reprob=recipe["reprob"], size=size)
        augment = TrainAugment(data_config, views, decoder, color_jitter=recipe["color_jitter"],
                               auto_augment=recipe["aa"])
        return cls(augment, k, MixRecipe.from_recipe(recipe))

    @property
    def mixes(self) -> bool:
        return self.mix is not None and self.mix.on

    def __call__(self, image, shard: str, key: str, position: int = 0, partners=None):
        image = self._as_decoded(image)
        made = [self.augment.view_of(image, shard, key, p) for p in range(self.k)]
        views = torch.stack([out for out, _ in made])
        rows = torch.tensor([v.as_row() for _, v in made], dtype=torch.float32)
        if not self.mixes:
            return views, rows, None
        others, other_rows, mix_rows, partner, lam = [], [], [], [], []
        for p, (out, view) in enumerate(made):
            mix = plan(self.mix, self.augment.views.seed, shard, key, p, position, len(partners.samples))
            other = out
            if mix.partner >= 0:
                partner_image, partner_key = partners(mix.partner)
                other, view = self.augment.view_of(self._as_decoded(partner_image), shard, partner_key, p)
            others.append(other)
            other_rows.append(view.as_row())
            mix_rows.append(mix.row(*self.augment.size))
            partner.append(mix.partner)
            lam.append(mix.lam)
        return views, rows, (torch.stack(others), torch.tensor(mix_rows, dtype=torch.float32),
                             torch.tensor(partner, dtype=torch.int32), torch.tensor(lam, dtype=torch.float32),
                             torch.tensor(other_rows, dtype=torch.float32))

    def _as_decoded(self, image):
        if self.augment.decoder == "cpu" and not isinstance(image, torch.Tensor):
            return pil_to_tensor(image)  # decoded by PIL for timm's border crop; the views go as cpu's
        return image


def auto_augment_policy(spec: str, data_config: dict):
    """timm's policy for an `--aa` string ("rand-m9-mstd0.5-inc1", "original-mstd0.5", "augmix-m5-w4-d2"),
    with the hyperparameters timm's training transform gives it (translation 45% of the size, the
    data set's mean as fill colour, the model's interpolation)."""
    size = min(int(v) for v in data_config["input_size"][1:])
    mean = data_config.get("mean", (0.485, 0.456, 0.406))
    params = {"translate_const": int(size * 0.45), "img_mean": tuple(min(255, round(255 * m)) for m in mean),
              "interpolation": str_to_pil_interp(data_config.get("interpolation", "bilinear"))}
    try:
        if spec.startswith("rand"):
            policy = rand_augment_transform(spec, params)
        elif spec.startswith("augmix"):
            policy = augment_and_mix_transform(spec, {**params, "translate_pct": 0.3})
        else:
            policy = auto_augment_transform(spec, params)
    except (AssertionError, KeyError, ValueError, IndexError) as exc:
        raise W2SError(f"--aa {spec!r} is not one of timm's auto-augment strings (rand-m9-mstd0.5-inc1, "
                       f"original-mstd0.5, augmix-m5-w4-d2, ...): {exc or type(exc).__name__}", option="--aa") from None
    for op in _ops(policy):
        if op.aug_fn is _timm_posterize():
            op.aug_fn = posterize
    return policy


def _ops(policy):
    """The AugmentOps of a timm policy (RandAugment's and AugMix's `ops`, AutoAugment's sub-policies)."""
    for item in getattr(policy, "ops", None) or [op for sub in getattr(policy, "policy", []) for op in sub]:
        if hasattr(item, "aug_fn"):
            yield item


def _timm_posterize():
    return auto_augment.posterize


def posterize(image, bits, **kwargs):
    """timm's posterize, also at 0 bits: magnitude noise (mstd) takes "PosterizeIncreasing" to 0 bits
    kept, which Pillow up to 12 turned into a black image and Pillow 13 refuses with a ValueError."""
    if bits <= 0:
        return Image.new(image.mode, image.size)
    return _timm_posterize()(image, bits, **kwargs)


def _on_pil(policy, image):
    """A PIL policy applied to a uint8 (3, H, W) tensor."""
    return pil_to_tensor(policy(Image.fromarray(image.permute(1, 2, 0).numpy())))


def header_size(data: bytes, where: str) -> tuple[int, int]:
    """(height, width) from the image's header alone (PIL reads no pixel data to answer)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Exception as exc:  # PIL raises many types for bad payloads
        raise W2SError(f"{where} ({exc})") from None
    return height, width


def pil_crop(image, view: View, size: tuple[int, int], interpolation: str):
    """timm's RandomResizedCrop for the view (PIL crop, then resize) and its flip, as a PIL image."""
    left, top, right, bottom = (int(v) for v in view.box())
    out = image.crop((left, top, right, bottom)).resize((size[1], size[0]), str_to_pil_interp(interpolation))
    return out.transpose(Image.FLIP_LEFT_RIGHT) if view.flip else out



def tensor_view(image, view: View, size: tuple[int, int], interpolation: str):
    """The same on a uint8 (3, H, W) tensor, with torchvision's uint8 antialiased resize."""
    crop = image[:, view.top: view.top + view.height, view.left: view.left + view.width]
    out = F.resize(crop, list(size), interpolation=str_to_interp_mode(interpolation), antialias=True)
    return out.flip(-1) if view.flip else out


class DeviceAugment:
    """`--decode gpu`'s main-process step: a batch's bytes and views -> float32 (N, 3, H, W) in
    0..255 on `device`: one nvJPEG call, a few batched crop-resizes, one flip. A bad image stops
    the run with its shard and key (training has no skip: samples left out at labelling are
    already absent)."""

    def __init__(self, data_config: dict, device):
        self.size = tuple(int(v) for v in data_config["input_size"][1:])
        self.device = device
        quiet_torchvision()

    def __call__(self, blobs: list[bytes], views, keys: list):
        images, bad = decode_images(blobs, self.device,
                                    lambda i: f"shard {keys[i][0]}, key {keys[i][1]!r}: cannot decode the image")
        if bad:
            raise W2SError(bad[min(bad)])
        boxes, flips = view_boxes(views)
        return flip_where(resized_crops(images, boxes, self.size), flips)

"""Decoding a WebDataset sample and timm's preprocessing for it."""

from __future__ import annotations

import io

from ..errors import W2SError

# Keys of timm's data config that define preprocessing; recorded in the store.
DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def decode_image(sample: dict, image_fields: tuple[str, ...], shard: str):
    """The sample's image as an RGB PIL image; the error names shard, key and reason."""
    from PIL import Image

    for name in image_fields:
        data = sample.get(name)
        if data is not None:
            try:
                image = Image.open(io.BytesIO(data))
                image.load()
            except Exception as exc:  # PIL raises many types for bad payloads
                raise W2SError(f"shard {shard}, key {sample.get('__key__')!r}: cannot decode {name!r} ({exc})") from None
            return image.convert("RGB")
    present = sorted(k for k in sample if not k.startswith("__"))
    raise W2SError(
        f"shard {shard}, key {sample.get('__key__')!r}: no image field {'/'.join(image_fields)} (has {', '.join(present) or 'nothing'})"
    )


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


def eval_transform(data_config: dict):
    import timm.data

    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in data_config.items()}
    return timm.data.create_transform(**cfg, is_training=False)

"""The pseudo-label store's schema, defined once: array names, dtypes, index columns, attributes.

Layout of a store (a directory or fsspec URL):

    zarr.json, <array>/...      Zarr v3 group; every array has R = n_shards * capacity rows
                                (a feature store, `w2s-pipe features`: one array, `features` (R, D) fp16,
                                a model's frozen pooled features; its index has no statistics)
    views/<array>/...           with `label --views K`: the weak model's output on K training views
                                of every sample (crop box, flip, logits or top-k, statistics), (R, K, ...)
    parts/<shard:06d>.parquet   one shard's index rows, written before its marker
    done/<shard:06d>.json       the shard's completion marker, written last
    claims/<shard:06d>.json     while a process labels the shard: its host and pid
    index.parquet               all index rows in shard order, written once every shard is done
    skipped.parquet             samples left out (--on-bad-sample skip): key, shard, reason

Shard i owns rows [i * capacity, i * capacity + n_i), n_i its labelled samples (its marker's count:
all of its samples but those skipped as bad): contiguous, in shard order, and one
Zarr chunk per shard, so writers of different shards never touch the same chunk. Rows past a
shard's count are padding (pred == -1, statistics NaN) and never appear in the index.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from ..pipeline.config.groups import RECIPE_DEFAULTS  # the options' one definition (config imports nothing heavy)

FORMAT = "w2s-pipe-store"
SCHEMA_VERSION = 2  # 2: per-view arrays under views/ (absent from centre-only stores), the `views` attribute
READABLE_VERSIONS = (1, 2)  # version 1 stores are centre-only; they read as version 2 without views

INDEX_FILE = "index.parquet"
SKIPPED_FILE = "skipped.parquet"  # key, shard, reason: samples left out by --on-bad-sample skip
PARTS_DIR = "parts"
DONE_DIR = "done"
CLAIMS_DIR = "claims"  # a live labelling process's claim on a shard (local stores)

# Per-sample statistics of the weak model's softmax, computed in float32 from the stored logits.
STAT_ARRAYS = {"pred": "int32", "confidence": "float32", "margin": "float32", "entropy": "float32"}
STAT_FILL = {"pred": -1, "confidence": float("nan"), "margin": float("nan"), "entropy": float("nan")}

LOGITS_DTYPE = "float16"
FLOAT16_MAX = float(np.finfo(np.float16).max)


def topk_index_dtype(num_classes: int) -> str:
    return "int16" if num_classes <= np.iinfo(np.int16).max else "int32"


def tensor_arrays(num_classes: int, topk: int | None) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Name -> (dtype, per-row shape) of the weak-output arrays: full logits, or top-k."""
    if topk:
        return {
            "topk_values": (LOGITS_DTYPE, (topk,)),
            "topk_indices": (topk_index_dtype(num_classes), (topk,)),
        }
    return {"logits": (LOGITS_DTYPE, (num_classes,))}


VIEWS = "views/"  # the per-view arrays' prefix
VIEW_BOX_DTYPE, VIEW_FLIP_DTYPE = "int32", "uint8"


def view_arrays(num_classes: int, topk: int | None, views: int, mixed: bool = False) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The per-view arrays of a store labelled with `views` views per sample (none for 0): each
    view's crop box (top, left, height, width in the decoded image's pixels), flip, with `mixed`
    views its partner (position in the shard, -1: not mixed) and the weight of its own pixels, the
    weak model's output on it and its statistics; per-row shape (views, ...)."""
    if not views:
        return {}
    arrays = {f"{VIEWS}crop": (VIEW_BOX_DTYPE, (views, 4)), f"{VIEWS}flip": (VIEW_FLIP_DTYPE, (views,))}
    if mixed:
        arrays.update({f"{VIEWS}partner": ("int32", (views,)), f"{VIEWS}lam": ("float32", (views,))})
    arrays.update({VIEWS + name: (dtype, (views, *shape)) for name, (dtype, shape) in tensor_arrays(num_classes, topk).items()})
    arrays.update({VIEWS + name: (dtype, (views,)) for name, dtype in STAT_ARRAYS.items()})
    return arrays


def all_arrays(num_classes: int, topk: int | None, views: int = 0, mixed: bool = False) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every array of a store, in the order a shard's digest reads them: the centre view's weak
    output and statistics, then the per-view arrays."""
    arrays = tensor_arrays(num_classes, topk)
    arrays.update({name: (dtype, ()) for name, dtype in STAT_ARRAYS.items()})
    arrays.update(view_arrays(num_classes, topk, views, mixed))
    return arrays


FEATURES, FEATURES_DTYPE = "features", "float16"


def feature_width(attrs: dict) -> int:
    """The feature width D of a feature store (0: a label store)."""
    return int((attrs.get("layout") or {}).get("features") or 0)


def store_arrays(attrs: dict) -> dict[str, tuple[str, tuple[int, ...]]]:
    """`all_arrays` of the store these attributes describe (a feature store: its features alone)."""
    layout = attrs["layout"]
    if feature_width(attrs):
        return {FEATURES: (FEATURES_DTYPE, (feature_width(attrs),))}
    return all_arrays(int(attrs["num_classes"]), layout.get("topk"), layout_views(attrs), views_mixed(attrs))


def views_mixed(attrs: dict) -> bool:
    """Whether a per-view store's views are mixed (label --views K --mixup/--cutmix)."""
    recipe = (attrs.get("views") or {}).get("recipe") or {}
    return bool((recipe.get("mixup") or recipe.get("cutmix")) and (recipe.get("mixup_prob") or 0) > 0)


def fill_value(name: str):
    """What a padding row holds (pred -1, statistics NaN, the rest 0)."""
    return STAT_FILL.get(name.removeprefix(VIEWS), 0)


def layout_views(attrs: dict) -> int:
    """Views per sample of a store (0: centre only, as every version 1 store)."""
    return int((attrs.get("layout") or {}).get("views") or 0)


SKIPPED_SCHEMA = pa.schema([pa.field("key", pa.string()), pa.field("shard", pa.string()), pa.field("reason", pa.string())])


def index_schema(with_label: bool, stats: bool = True) -> pa.Schema:
    """The index's columns: key, shard, row, the weak output's statistics (not in a feature store's),
    and the ground-truth label where the shards carry one."""
    fields = [pa.field("key", pa.string()), pa.field("shard", pa.string()), pa.field("row", pa.int64())]
    if stats:
        fields += [pa.field(name, pa.from_numpy_dtype(np.dtype(dtype))) for name, dtype in STAT_ARRAYS.items()]
    if with_label:
        fields.append(pa.field("label", pa.int32()))
    return pa.schema(fields)


# Attributes every store carries (zarr group attributes). Nested keys are documented in the README.
REQUIRED_ATTRS = (
    "format",
    "schema_version",
    "weak",  # {model, checkpoint, checkpoint_sha256, and classes where it was trained on some only}
    "num_classes",
    "class_names",
    "preprocessing",  # timm data config (input_size, interpolation, mean, std, crop_pct, crop_mode) and decode
    "precision",
    "data",  # {name, split, pattern, image_field, label_field, fingerprint, shards: [{name, url, count, bytes}]}
    "layout",  # {capacity, rows, topk, views (per-view stores only), features (feature stores only: D)}
    "tool_version",
    "created",
)

# The attributes that make two label runs "the same job": a re-run may only fill in missing
# shards of a store whose identity matches; anything else needs --overwrite.
IDENTITY_FIELDS = (
    "weak.model",
    "weak.checkpoint_sha256",
    "num_classes",
    "preprocessing",
    "precision",
    "data.fingerprint",
    "layout.topk",
    "layout.views",
    "layout.features",
    "views",  # {k, seed, recipe, fingerprint} of a per-view store
)


def store_attrs(*, weak: dict, num_classes: int, class_names, preprocessing: dict, precision: str, data: dict,
                shards: list[dict], fingerprint: str, topk: int | None, tool_version: str, config: dict,
                views: dict | None = None, features: int = 0) -> dict:
    """A new store's attributes (all of REQUIRED_ATTRS but format, schema_version and created, which
    the writer adds). `weak`: {model, checkpoint, checkpoint_sha256}; `preprocessing`: the timm data
    config plus "decode"; `data`: {name, split, pattern, image_field, label_field} of the source,
    completed here with its `shards` ({name, url, count, bytes, ...}) and their `fingerprint`. The
    layout gives every shard the rows of the largest (`capacity`), one chunk each. `views`, for a
    per-view store: {k, seed, recipe, fingerprint} (the recipe: config.groups.ViewRecipe.recipe).
    `features`: a feature store's width D (its `weak` is then the model whose features it holds)."""
    capacity = max(int(s["count"]) for s in shards)
    extra = {"views": dict(views)} if views else {}
    layout_extra = {"views": int(views["k"])} if views else {}
    if features:
        layout_extra["features"] = int(features)
    return {
        "weak": {**{k: weak.get(k) for k in ("model", "checkpoint", "checkpoint_sha256")},
                 **({"classes": list(weak["classes"])} if weak.get("classes") else {})},
        "num_classes": int(num_classes),
        "class_names": list(class_names or []) or None,
        "preprocessing": dict(preprocessing),
        "precision": precision,
        "data": {**{k: data.get(k) for k in ("name", "split", "pattern", "image_field", "label_field")},
                 "fingerprint": fingerprint, "shards": list(shards)},
        "layout": {"capacity": capacity, "rows": capacity * len(shards), "topk": topk, **layout_extra},
        "tool_version": tool_version,
        "config": dict(config),
        **extra,
    }


def views_meta(attrs: dict) -> dict | None:
    """A per-view store's `views` attribute with the view recipe's options it predates (recorded
    before the option existed) at their defaults (None for a centre store). What a recipe records
    and means is config.groups.ViewRecipe's: `train` must draw with the same to replay its views."""
    meta = attrs.get("views")
    if not meta:
        return None
    return {**meta, "recipe": {**RECIPE_DEFAULTS, **(meta.get("recipe") or {})}}


def preprocessing(attrs: dict) -> dict:
    """A store's preprocessing record; stores written before `decode` was recorded used PIL."""
    return {"decode": "pil", **(attrs.get("preprocessing") or {})}


def get_field(attrs: dict, dotted: str):
    value = attrs
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def shard_digest(keys: list[str], arrays: dict) -> str:
    """sha256 of a shard's keys and its rows of every array, in `all_arrays` order (the marker's)."""
    h = hashlib.sha256("\n".join(keys).encode())
    for name in arrays:
        h.update(np.ascontiguousarray(arrays[name]).tobytes())
    return h.hexdigest()


def shard_file(directory: str, shard_index: int, suffix: str) -> str:
    return f"{directory}/{shard_index:06d}{suffix}"

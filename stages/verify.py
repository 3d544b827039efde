"""`w2s-pipe verify STORE`: check a label store against its data and itself; exit non-zero on any problem.

Checks, each problem reported with its shard and key:
* attributes complete and of this schema version; every shard complete;
* each shard's marker matches its rows (count, row range, sha256 of keys and arrays);
* the data: every sample of each shard has exactly one row, in order (tar headers are read, the
  images are not), and the shard files are the ones the store labelled;
* no non-finite values; pred / confidence / margin / entropy agree with the stored logits;
  the index agrees with the arrays and its label column with the shards' own labels; padding
  rows are padding;
* a per-view store's views: finite, each view's pred its logits' argmax, boxes inside the image;
* with --recompute N: the weak model, rebuilt from the recorded checkpoint and preprocessing, is
  run again on N random samples and its logits compared with the stored ones; of a per-view store,
  each sample's K views are drawn again (their boxes must be the stored ones) and replayed through
  it (top-1 agreement and the largest logit difference, per view).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import W2SError
from ..pipeline.image.decode import decode_batch
from ..pipeline.image.preprocess import DeviceNormalize, Preprocess, TensorGeometry
from ..pipeline.loaders.shard_batches import ShardImages
from ..pipeline.models.build import load_model
from ..pipeline.models.checkpoint import file_sha256
from ..pipeline.runtime import distributed
from ..pipeline.sources.shards import changed_shards, iter_samples, list_keys, shard_labels
from ..pipeline.views.mixing import finished_views
from ..pipeline.views.pixels import LabelViews
from ..pipeline.weak.labelling import weak_outputs
from ..storage import open_store, schema
from ..storage.fsutil import join
from .verify_config import VerifyConfig

MAX_LISTED = 20  # problems listed per check; the count is always exact


@dataclass
class VerifyReport:
    store: str
    checks: list[tuple[str, int]] = field(default_factory=list)  # (check, problems found)
    problems: list[str] = field(default_factory=list)

    def add(self, check: str, found: list[str]) -> None:
        self.checks.append((check, len(found)))
        self.problems.extend(found[:MAX_LISTED])
        if len(found) > MAX_LISTED:
            self.problems.append(f"... and {len(found) - MAX_LISTED} more problems of: {check}")

    @property
    def ok(self) -> bool:
        return all(n == 0 for _, n in self.checks)

    def summary(self) -> list[str]:
        lines = [f"{'ok' if not found else 'FAIL'}  {check}" + (f": {found} problems" if found else "")
                 for check, found in self.checks]
        lines += [f"  {problem}" for problem in self.problems]
        return lines + ([f"store {self.store}: no problems found"] if self.ok else [])


def _softmax_stats64(logits: np.ndarray) -> dict[str, np.ndarray]:
    x = logits.astype(np.float64)
    z = x - x.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    p = np.exp(logp)
    top2 = -np.sort(-p, axis=1)[:, :2]
    return {"confidence": top2[:, 0], "margin": top2[:, 0] - top2[:, 1], "entropy": -(p * logp).sum(axis=1)}


def run_verify(cfg: VerifyConfig) -> VerifyReport:
    report = VerifyReport(cfg.store)
    try:
        store = open_store(cfg.store)
    except W2SError as exc:
        report.add("attributes and arrays", [str(exc)])
        return report
    report.add("attributes and arrays", [])
    missing = store.missing_shards()
    index_ok = store.fs.exists(join(store.path, schema.INDEX_FILE))
    report.add("every shard labelled", [f"shard {name}: not labelled (no completion marker)" for name in missing]
               + ([] if index_ok or missing else ["index.parquet is missing"]))

    index = None
    if not missing and index_ok:
        try:
            index = store.index()
            report.add("index and markers readable", [])
        except W2SError as exc:
            report.add("index and markers readable", [str(exc)])
    offsets, position = {}, 0
    if index is not None:
        for s, n in zip(store.shards, store.labelled_counts):
            offsets[s["name"]] = position
            position += n
        if index.num_rows != position:
            report.add("index rows", [f"index.parquet has {index.num_rows} rows, the shards {position} samples"])
            index = None
    marker_problems, value_problems, index_problems, data_problems = [], [], [], []
    done = store.done_shards()
    for i, s in enumerate(store.shards):
        if i not in done:
            continue
        read = _shard_and_marker(store, i, marker_problems)
        if read is None:
            continue
        rows, count, skipped, whole = read
        value_problems += _value_problems(store, i, rows, count)
        if index is not None:  # the index agrees with the arrays
            index_problems += _index_problems(store, i, rows, index.slice(offsets[s["name"]], count), cfg.check_data)
        # The data: exactly one row per sample, in order, and the same files.
        if cfg.check_data and not whole:
            data_problems += _check_shard_data(s, rows.keys, {k["key"] for k in skipped})
    report.add("markers match rows", marker_problems)
    report.add("values finite and consistent", value_problems)
    if index is not None:
        report.add("index agrees with arrays", index_problems)
    if cfg.check_data:
        report.add("one row per sample of the data", data_problems)
    if cfg.recompute and store.features:
        report.add("--recompute", ["recomputing is for label stores; a feature store's rows are checked against their "
                                   "markers above"])
    elif cfg.recompute and not missing:
        problems, views = _recompute(store, cfg)
        replayed = (f"; their {views['views']} views replayed: top-1 agreement {views['agree'] / views['views']:.3f}, "
                    f"largest logit difference {views['diff']:.3g}") if views["views"] else ""
        report.add(f"recomputed {cfg.recompute} samples with the weak model{replayed}", problems)
    return report


def _shard_and_marker(store, i: int, problems: list):
    """(rows, count, skipped, whole: the shard skipped whole) of done shard `i`, its marker checked
    against its rows; None (its problems added to `problems`) where they cannot be read or disagree."""
    s, arrays_spec = store.shards[i], schema.store_arrays(store.attrs)
    name, done_file = s["name"], schema.shard_file(schema.DONE_DIR, i, ".json")
    try:
        rows = store.shard_rows(i)
        with store.fs.open(join(store.path, done_file), "rb") as f:
            marker = json.load(f)
        count, skipped = int(marker.get("count", -1)), list(marker.get("skipped", []))
    except W2SError as exc:
        problems.append(str(exc))
        return None
    except (ValueError, TypeError, AttributeError) as exc:
        problems.append(f"shard {name}: {done_file} is not a completion marker ({exc})")
        return None
    whole = any(k["key"] is None for k in skipped)
    if (not whole and count + len(skipped) != int(s["count"])) or marker.get("start") != i * store.capacity:
        problems.append(f"shard {name}: {done_file} says {count} rows and {len(skipped)} skipped from "
                        f"{marker.get('start')}, the data source {s['count']} samples from {i * store.capacity}")
    if len(rows.keys) != count:
        problems.append(f"shard {name}: {len(rows.keys)} rows in its index part, {count} in {done_file}")
        return None
    if marker.get("sha256") != schema.shard_digest(rows.keys, {k: rows.arrays[k] for k in arrays_spec}):
        problems.append(f"shard {name}: rows differ from what label wrote (their sha256 is not {done_file}'s)")
    return rows, count, skipped, whole


def _value_problems(store, i: int, rows, count: int) -> list[str]:
    """Shard `i`'s values: finite, statistics consistent with the stored logits, padding empty."""
    name, problems = store.shards[i]["name"], []
    if store.features:
        return _feature_problems(store, i, rows, count)
    tensor = rows.arrays["logits"] if "logits" in rows.arrays else rows.arrays["topk_values"]
    bad = ~np.isfinite(tensor.astype(np.float32)).all(axis=1)
    problems += [f"shard {name}, key {rows.keys[j]!r}: non-finite logits" for j in np.nonzero(bad)[0]]
    pred = rows.arrays["pred"]
    if "logits" in rows.arrays:
        logits = rows.arrays["logits"].astype(np.float32)
        best = logits.max(axis=1)
        wrong_pred = logits[np.arange(count), np.clip(pred, 0, store.num_classes - 1)] != best
        problems += [f"shard {name}, key {rows.keys[j]!r}: pred {pred[j]} is not the argmax of the logits"
                     for j in np.nonzero(wrong_pred & ~bad)[0]]
        expected = _softmax_stats64(np.where(bad[:, None], 0, logits))
        for stat, values in expected.items():
            off = np.abs(rows.arrays[stat].astype(np.float64) - values) > 1e-5
            problems += [f"shard {name}, key {rows.keys[j]!r}: {stat} {rows.arrays[stat][j]:.6g} disagrees "
                         f"with the logits ({values[j]:.6g})" for j in np.nonzero(off & ~bad)[0]]
    else:
        off = pred != rows.arrays["topk_indices"][:, 0]
        problems += [f"shard {name}, key {rows.keys[j]!r}: pred is not the top-1 index" for j in np.nonzero(off)[0]]
    problems += _view_problems(rows, name)
    padding = store.group["pred"][i * store.capacity + count : (i + 1) * store.capacity]
    if (padding != -1).any():
        problems.append(f"shard {name}: padding rows after row {count} hold values")
    return problems


def _feature_problems(store, i: int, rows, count: int) -> list[str]:
    """A feature store's shard `i`: finite features, padding empty."""
    name, features = store.shards[i]["name"], rows.arrays[schema.FEATURES]
    bad = ~np.isfinite(features.astype(np.float32)).all(axis=1)
    problems = [f"shard {name}, key {rows.keys[j]!r}: non-finite features" for j in np.nonzero(bad)[0]]
    padding = store.group[schema.FEATURES][i * store.capacity + count: (i + 1) * store.capacity]
    if padding.size and (padding != 0).any():
        problems.append(f"shard {name}: padding rows after row {count} hold values")
    return problems


def _index_problems(store, i: int, rows, part, check_data: bool) -> list[str]:
    """index.parquet's part of shard `i` against its arrays (and its labels against the shard's own)."""
    s, problems = store.shards[i], []
    name, count = s["name"], len(rows.keys)
    if part.column("key").to_pylist() != rows.keys or set(part.column("shard").to_pylist()) - {name}:
        problems.append(f"shard {name}: index.parquet keys differ from the shard's rows")
    expected_rows = np.arange(i * store.capacity, i * store.capacity + count)
    if not np.array_equal(part.column("row").to_numpy(), expected_rows):
        problems.append(f"shard {name}: index.parquet row numbers are not its row range")
    for stat in () if store.features else schema.STAT_ARRAYS:
        if not np.array_equal(part.column(stat).to_numpy(), rows.arrays[stat], equal_nan=True):
            problems.append(f"shard {name}: index.parquet column {stat} differs from the {stat} array")
    if check_data and "label" in part.column_names and store.attrs["data"].get("label_field"):
        problems += _check_labels(s, rows.keys, part.column("label").to_pylist(), store.attrs["data"]["label_field"])
    return problems


def _check_labels(shard: dict, keys: list[str], stored: list, label_field: str) -> list[str]:
    """index.parquet's ground-truth column against the shard's own labels (its label members only)."""
    try:
        truth = shard_labels(shard["url"], label_field.split(";")[0])
    except W2SError as exc:
        return [str(exc)]
    return [f"shard {shard['name']}, key {k!r}: index.parquet's label {got} is not the shard's {truth.get(k)}"
            for k, got in zip(keys, stored) if truth.get(k) != got]


def _check_shard_data(shard: dict, stored: list[str], skipped: set) -> list[str]:
    name, url = shard["name"], shard["url"]
    try:
        keys = list_keys(url)
    except (W2SError, FileNotFoundError, OSError) as exc:
        return [f"shard {name}: cannot read {url} ({exc})"]
    problems = changed_shards([shard], threads=1)
    seen = set()
    for key in keys:
        if key in seen and key not in skipped:
            problems.append(f"shard {name}, key {key!r}: appears more than once in the shard")
        seen.add(key)
    stored_set = set(stored)
    problems += [f"shard {name}, key {k!r}: in the data, no row in the store" for k in keys
                 if k not in stored_set and k not in skipped]
    problems += [f"shard {name}, key {k!r}: a row in the store, not in the data" for k in stored if k not in seen]
    if not problems and [k for k in keys if k in stored_set][: len(stored)] != stored:
        problems.append(f"shard {name}: rows are not in the shard's sample order")
    return problems


def _view_problems(rows, name: str) -> list[str]:
    """A per-view store's views of one shard: finite outputs, each view's pred the argmax of its
    logits (or its top-1 index), a box of positive size."""
    if f"{schema.VIEWS}pred" not in rows.arrays:
        return []
    full = f"{schema.VIEWS}logits" in rows.arrays
    tensor = rows.arrays[f"{schema.VIEWS}{'logits' if full else 'topk_values'}"].astype(np.float32)
    bad = ~np.isfinite(tensor).reshape(len(tensor), -1).all(axis=1)
    problems = [f"shard {name}, key {rows.keys[j]!r}: non-finite logits of a view" for j in np.nonzero(bad)[0]]
    pred = rows.arrays[f"{schema.VIEWS}pred"]
    expected = tensor.argmax(axis=-1) if full else rows.arrays[f"{schema.VIEWS}topk_indices"][..., 0]
    off = (pred != expected).any(axis=1) & ~bad
    problems += [f"shard {name}, key {rows.keys[j]!r}: a view's pred is not its argmax" for j in np.nonzero(off)[0]]
    boxes = rows.arrays[f"{schema.VIEWS}crop"]
    empty = (boxes[..., 2:] <= 0).any(axis=(1, 2)) | (boxes[..., :2] < 0).any(axis=(1, 2))
    problems += [f"shard {name}, key {rows.keys[j]!r}: a view's box is empty or outside the image"
                 for j in np.nonzero(empty)[0]]
    return problems


def _recompute(store, cfg: VerifyConfig) -> tuple[list[str], dict]:
    """Problems found recomputing `cfg.recompute` random samples, and of a per-view store's views
    replayed: {"views": how many, "agree": how many kept their stored top-1, "diff": the largest
    logit difference}."""
    weak = store.attrs["weak"]
    if weak.get("checkpoint"):
        try:
            if file_sha256(weak["checkpoint"]) != weak["checkpoint_sha256"]:
                return [f"checkpoint {weak['checkpoint']} changed since labelling (sha256 differs); cannot recompute"], {
                    "views": 0}
        except FileNotFoundError:
            return [f"checkpoint {weak['checkpoint']} is gone; cannot recompute"], {"views": 0}
    loaded = load_model(weak["model"], checkpoint=weak.get("checkpoint"), num_classes=store.num_classes)
    device = distributed.pick_device(cfg.device)
    model = loaded.model.to(device).eval()
    preprocessing = schema.preprocessing(store.attrs)
    decoder = preprocessing["decode"]
    prepare = Preprocess(preprocessing, decoder)  # under gpu: the raw bytes, for decode_batch
    geometry = TensorGeometry(preprocessing)
    normalize = DeviceNormalize(preprocessing, device)
    precision = store.attrs["precision"]
    image_fields = tuple(store.attrs["data"]["image_field"].split(";"))
    rng = random.Random(cfg.seed)
    everything = [(i, j) for i, n in enumerate(store.labelled_counts) for j in range(n)]
    chosen = sorted(rng.sample(everything, min(cfg.recompute, len(everything))))
    problems, views = [], {"views": 0, "agree": 0, "diff": 0.0}
    by_shard: dict[int, set[int]] = {}
    for i, j in chosen:
        by_shard.setdefault(i, set()).add(j)
    tol = 1e-2 if precision == "fp32" else 0.1  # fp16 storage; bf16/fp16 inference varies with batch layout
    if decoder == "gpu" and device.type != "cuda":
        tol = max(tol, 0.1)  # nvJPEG's IDCT and the GPU resize differ from the CPU's by a grey level or so
    for i, wanted in by_shard.items():
        rows = store.shard_rows(i)
        logits = rows.dense_logits(store.num_classes).astype(np.float32)
        wanted_keys = {rows.keys[j]: j for j in wanted}  # by key: skipped samples shift positions
        samples, partners = iter_samples(store.shards[i]["url"]), None
        if store.views_mixed:  # partners anywhere in the shard; nothing skipped, so row j is position j
            samples = list(samples)
            partners = ShardImages(samples, prepare, image_fields, rows.name)
        for sample in samples:
            j = wanted_keys.pop(sample["__key__"], None)
            if j is None:
                continue
            if decoder == "gpu":
                blob = prepare(sample, image_fields, store.shards[i]["name"])
                where = f"shard {store.shards[i]['name']}, key {sample['__key__']!r}: cannot decode the image"
                x, bad = decode_batch([blob], geometry, device, lambda i: where)
                if bad:
                    problems.append(bad[0])
                    continue
            else:
                x = prepare(sample, image_fields, store.shards[i]["name"])[None]
            with torch.inference_mode():  # the very step that labelled the store (weak/labelling.py)
                fresh = weak_outputs(model, normalize(x), topk=store.topk, autocast=distributed.autocast(precision, device))
            key = sample["__key__"]
            if bool(fresh["bad"][0]):
                problems.append(f"shard {rows.name}, key {key!r}: a fresh forward's logits are not storable (not "
                                "finite, or beyond float16)")
                continue
            if store.topk:  # each sorted by value: a near-tie's indices may swap, its values may not move
                stored_vals = rows.arrays["topk_values"][j].astype(np.float32)
                fresh_vals = fresh["topk_values"][0].float().cpu().numpy()
            else:
                stored_vals, fresh_vals = logits[j], fresh["logits"][0].float().cpu().numpy()
            scale = max(1.0, float(np.abs(fresh_vals).max()))
            diff = float(np.abs(stored_vals - fresh_vals).max())
            if diff > tol * scale:
                problems.append(f"shard {rows.name}, key {key!r}: stored logits differ from a fresh forward by {diff:.4g}")
            if store.views:
                problems += replay_views(store, rows, j, prepare.decode(sample, image_fields, rows.name), model,
                                         normalize, precision, device, tol, views, partners)
        problems += [f"shard {rows.name}, key {k!r}: not found in the data" for k in wanted_keys]
    return problems, views


def replay_views(store, rows, j: int, image, model, normalize, precision: str, device, tol: float,
                 figures: dict, partners=None) -> list[str]:
    """Sample j of a shard's rows of a per-view store: its K views drawn again from the recorded
    seed and recipe (their boxes and flips, and mixed views' partners and λ, must be the stored
    ones; `partners`: the shard's images, loader.ShardImages), cropped at the weak model's input
    size and run through it; their logits must be the stored ones within `tol` (float16
    storage), and their argmax the stored pred. Adds to `figures` (views, agree, diff)."""
    meta, key = schema.views_meta(store.attrs), rows.keys[j]
    preprocessing = schema.preprocessing(store.attrs)
    crops, drawn, mixed = LabelViews.from_recipe(meta["recipe"], meta["seed"], store.views, preprocessing,
                                                 preprocessing["decode"])(image, rows.name, key, position=j,
                                                                          partners=partners)
    stored_boxes = np.concatenate([rows.arrays[f"{schema.VIEWS}crop"][j], rows.arrays[f"{schema.VIEWS}flip"][j][:, None]], 1)
    if not np.array_equal(drawn[:, :5].numpy().astype(np.int64), stored_boxes.astype(np.int64)):
        return [f"shard {rows.name}, key {key!r}: the views drawn again are not the stored boxes and flips "
                "(another version of the view code?)"]
    if mixed is not None and not (np.array_equal(mixed[2].numpy(), rows.arrays[f"{schema.VIEWS}partner"][j])
                                  and np.allclose(mixed[3].numpy(), rows.arrays[f"{schema.VIEWS}lam"][j])):
        return [f"shard {rows.name}, key {key!r}: the mixes drawn again are not the stored partners and weights"]
    x = finished_views(normalize, crops, drawn, None if mixed is None else (mixed[0], mixed[1], mixed[4]))
    with torch.inference_mode(), distributed.autocast(precision, device):
        fresh = model(x).float().cpu().numpy()
    agree = float((rows.arrays[f"{schema.VIEWS}pred"][j] == np.argmax(fresh, axis=-1)).mean())
    if store.topk:
        top = rows.arrays[f"{schema.VIEWS}topk_indices"][j].astype(np.int64)
        stored, fresh = rows.arrays[f"{schema.VIEWS}topk_values"][j].astype(np.float32), np.take_along_axis(fresh, top, 1)
    else:
        stored = rows.arrays[f"{schema.VIEWS}logits"][j].astype(np.float32)
    diff = float(np.abs(stored - fresh).max())
    figures.update(views=figures["views"] + store.views, agree=figures["agree"] + round(agree * store.views),
                   diff=max(figures["diff"], diff))
    if diff > tol * max(1.0, float(np.abs(fresh).max())) or agree < 1.0:
        return [f"shard {rows.name}, key {key!r}: the replayed views' logits differ from the stored by {diff:.4g} "
                f"(top-1 agreement {agree:.2f})"]
    return []

"""Labelling's parts, composed by `stages/label.py`:

    weak_outputs    the step: the weak model on a batch -> what the store keeps, on the device
    HostCopy        each batch's outputs copied to the host one batch late (no wait per batch)
    Gathered        each shard's rows (LandedRows) gathered as its batches land, until it ends
    ShardWrites     finished shards written on a background thread while the device labels on

The store's layout and writing rules are storage's (`storage/writer.py`); these only feed it.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from ...errors import W2SError
from ...storage.schema import VIEWS
from ..views.mixing import finished_views
from .statistics import stored_outputs, unstorable_rows


def weak_outputs(model, images, *, topk: int | None = None, autocast=None, views=None) -> dict:
    """The labelling step: normalised images (N, 3, H, W) on the model's device -> on the device,
    "bad" (N,) bool (rows whose logits are not finite or exceed float16's range: never stored) and
    what the store keeps for each row (`stats.stored_outputs`): float16 "logits" (N, C), or with
    `topk` "topk_values" and "topk_indices" (N, k), and "pred", "confidence", "margin", "entropy"
    (N,) computed from the float16 logits. `views`, normalised (N, K, 3, H, W): each sample's
    training views (`label --views`), run in the same forward pass; their outputs are
    "views/<name>" (N, K, ...), and a row is bad if any of its views is. Call it under
    `torch.inference_mode()`."""
    n = len(images)
    x = images if views is None else torch.cat([images, views.flatten(0, 1)])
    with autocast or contextlib.nullcontext():
        logits = model(x)
    bad, out = unstorable_rows(logits), stored_outputs(logits, topk)
    if views is None:
        return {"bad": bad, **out}
    k = views.shape[1]
    return {"bad": bad[:n] | bad[n:].view(n, k).any(1), **{name: v[:n] for name, v in out.items()},
            **{VIEWS + name: v[n:].unflatten(0, (n, k)) for name, v in out.items()}}


def view_inputs(batch, normalize):
    """A loader batch's training views (`label --views K`), normalised and on the device, mixed with
    their partners' views where the store's recipe mixes (`mixing.mix_pixels`, as train mixes
    them): (N, K, 3, H, W) for `weak_outputs`, or None without views; and what the store keeps of
    each view besides the weak model's output (box, flip; partner and λ of mixed views)."""
    if batch.views is None:
        return None, {}

    n, k = batch.views.shape[:2]
    mixed = None if batch.mix_rows is None else (batch.partner_views.flatten(0, 1), batch.mix_rows.flatten(0, 1),
                                                 batch.partner_rows.flatten(0, 1))

    views = finished_views(normalize, batch.views.flatten(0, 1), batch.view_rows.flatten(0, 1), mixed)
    records = view_records(batch.view_rows)
    if mixed is not None:
        records.update({f"{VIEWS}partner": batch.mix_partner, f"{VIEWS}lam": batch.mix_lam})
    return views.unflatten(0, (n, k)), records


def view_records(view_rows) -> dict:
    """What a per-view store keeps of each view besides the weak model's output: its crop box
    (top, left, height, width) int32 (N, K, 4) and flip uint8 (N, K), from (N, K, 12) view rows (a
    view's erasing is drawn again from the recipe and seed)."""
    return {f"{VIEWS}crop": view_rows[..., :4].round().to(torch.int32), f"{VIEWS}flip": (view_rows[..., 4] > 0).to(torch.uint8)}


@dataclass
class Landed:
    """A batch's outputs on the host, checked."""

    shard: int
    keys: list[str]
    labels: np.ndarray | None
    outputs: dict[str, np.ndarray]


class HostCopy:
    """A batch's outputs go to the host asynchronously while the next batch is computed: `push`
    starts one batch's copy and returns the batch before it, landed; `drain` lands the last. So
    there is one wait per batch and the device always has the next batch queued.

    Landing checks the rows: a non-finite logit stops the run naming shard and key (nothing of
    that shard is stored)."""

    def __init__(self, device, shard_names: list[str], what: str | None = None):
        self.device, self.shard_names = device, shard_names
        self.what = what or "the weak model's logits"  # what the rows hold, for the error
        self.inflight = None

    def push(self, shard: int, keys: list[str], labels, outputs: dict) -> Landed | None:
        on_host = {k: v.to("cpu", non_blocking=True) for k, v in outputs.items()}
        done = None
        if self.device.type == "cuda":
            done = torch.cuda.Event()
            done.record()
        previous = self.drain()
        self.inflight = (shard, keys, None if labels is None else labels.numpy(), on_host, done)
        return previous

    def drain(self) -> Landed | None:
        if self.inflight is None:
            return None
        shard, keys, labels, on_host, done = self.inflight
        self.inflight = None
        if done is not None:
            done.synchronize()
        bad = on_host.pop("bad")
        if bool(bad.any()):
            key = keys[int(bad.nonzero()[0, 0])]
            raise W2SError(
                f"shard {self.shard_names[shard]}, key {key!r}: {self.what} are not finite or exceed "
                "float16's range; nothing was stored for this shard (try --precision fp32, or check the checkpoint)")
        return Landed(shard, keys, labels, {k: v.numpy() for k, v in on_host.items()})


@dataclass
class LandedRows:
    """One shard's landed rows, in the shard's order."""

    keys: list[str] = field(default_factory=list)
    labels: list = field(default_factory=list)  # one array (or None) per batch
    outputs: list[dict] = field(default_factory=list)

    def add(self, landed: Landed) -> None:
        self.keys.extend(landed.keys)
        self.labels.append(landed.labels)
        self.outputs.append(landed.outputs)

    def arrays(self, empty: dict[str, np.ndarray]) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        """(labels or None, {array: rows}); `empty` holds each array with no rows (a shard whose
        every sample was skipped)."""
        if not self.outputs:
            return None, empty
        labels = None if any(lab is None for lab in self.labels) else np.concatenate(self.labels)
        return labels, {k: np.concatenate([o[k] for o in self.outputs]) for k in self.outputs[0]}


class Gathered:
    """The landed rows of every shard not yet ended, and how many rows landed in all."""

    def __init__(self):
        self.shards: dict[int, LandedRows] = {}
        self.rows = 0

    def add(self, landed: Landed | None) -> int:
        """Keep a landed batch (None: nothing landed yet); returns its row count."""
        if landed is None:
            return 0
        self.shards.setdefault(landed.shard, LandedRows()).add(landed)
        self.rows += len(landed.keys)
        return len(landed.keys)

    def pop(self, shard: int) -> LandedRows:
        return self.shards.pop(shard, None) or LandedRows()


def empty_outputs(arrays: dict) -> dict[str, np.ndarray]:
    """Each of a store's arrays (`StoreWriter.arrays`: name -> (dtype, row shape)) with no rows."""
    return {name: np.zeros((0, *shape), dtype=dtype) for name, (dtype, shape) in arrays.items()}


class ShardWrites:
    """Finished shards written into the store on one background thread (rows, index part, then the
    marker; `StoreWriter.write_shard`), each shard's claim released once written. A failed write
    is raised at the next `submit`, or at `wait`. Use as a context manager."""

    def __init__(self, writer, claims):
        self.writer, self.claims = writer, claims
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.futures: list[Future] = []

    def __enter__(self) -> "ShardWrites":
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(wait=True)

    def submit(self, index: int, rows: LandedRows, count: int, skipped: list[dict]) -> None:
        """Write shard `index`: `count` samples read and decoded, which must be the rows landed."""
        self.futures.append(self.pool.submit(self._write, index, rows, count, skipped))
        for f in self.futures:
            if f.done() and f.exception() is not None:
                f.result()

    def record_unreadable(self, index: int, reason: str) -> None:
        """A shard with nothing to read (unreadable or empty, under --on-bad-sample skip), recorded
        whole as skipped, written at once."""
        self.writer.write_shard(index, [], None, empty_outputs(self.writer.arrays),
                                skipped=[{"key": None, "reason": reason}])
        self.claims.release(index)

    def wait(self) -> None:
        for f in self.futures:
            f.result()

    def _write(self, index: int, rows: LandedRows, count: int, skipped: list[dict]) -> None:
        if len(rows.keys) != count:
            raise RuntimeError(f"shard {index}: {len(rows.keys)} rows landed, {count} read")
        labels, arrays = rows.arrays(empty_outputs(self.writer.arrays))
        self.writer.write_shard(index, rows.keys, labels, arrays, skipped=skipped)
        self.claims.release(index)

"""Several weak teachers, each labelled once, as one: `train --labels A,B,... --ensemble HOW`.

The members are stores of the same shards (their data fingerprints equal; else the first shard that
differs is named). Per sample, the members' weak outputs (dense logits; a top-k store's rebuilt, see
`ShardRows.dense_logits`) combine into one weak output, the logits every loss reads:

- mean-prob: log of the mean of the members' softmax (the ensemble's predictive distribution);
- mean-logit: the mean of the members' logits (their softmax's geometric mean, renormalised);
- vote: log of the share of members whose argmax is each class (a class no member predicts gets
  log(1e-6) of the share, so every loss stays finite); ties in the argmax go to the lower class;
- or a way of your own: each is a class of pipeline/ensembles/ (registry.py).

An ensemble has an index like a store's (pred, confidence, margin and entropy of the combined
output, the label where the shards carry one), with one more column for `--select`: `agreement`,
how many members' argmax is the ensemble's.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from ...errors import W2SError
from ...storage.reader import ShardRows
from ..ensembles.registry import combination
from .statistics import softmax_stats


def combine(logits: list[np.ndarray], how: str) -> np.ndarray:
    """The members' (n, C) logits (any float dtype) -> the ensemble's (n, C) float32 logits."""
    x = torch.from_numpy(np.stack([np.asarray(m, dtype=np.float64) for m in logits]))  # (M, n, C)
    return combine_tensor(x, how).numpy().astype(np.float32)


def combine_tensor(x: torch.Tensor, how: str) -> torch.Tensor:
    """`combine` of the members' logits as one (M, n, C) tensor (the join's, and a step's under
    members.Members), in its dtype: the combination `how` of pipeline/ensembles/."""
    return combination(how).combine(x)


def agreement(logits: list[np.ndarray], combined: np.ndarray) -> np.ndarray:
    """(n,) int32: how many members' argmax is the ensemble's."""
    pred = combined.argmax(axis=-1)
    return sum((np.asarray(m).argmax(axis=-1) == pred).astype(np.int32) for m in logits)


def check_members(stores: list) -> None:
    """The members label the same shards with the same classes: a one-line error naming the first
    difference (a shard, or the number of classes)."""
    first = stores[0]
    for other in stores[1:]:
        if other.num_classes != first.num_classes:
            raise W2SError(f"--labels: store {other.url} has {other.num_classes} classes, store {first.url} "
                           f"{first.num_classes}", option="--labels")
        a, b = first.attrs["data"], other.attrs["data"]
        if a.get("fingerprint") == b.get("fingerprint"):
            continue
        for mine, theirs in zip(a["shards"], b["shards"]):
            keys = ("name", "count", "bytes")
            if any(mine.get(k) != theirs.get(k) for k in keys):
                raise W2SError(f"--labels: stores {first.url} and {other.url} labelled other shards: shard "
                               f"{mine.get('name')} ({mine.get('count')} samples) against {theirs.get('name')} "
                               f"({theirs.get('count')} samples)", option="--labels")
        if len(a["shards"]) != len(b["shards"]):
            raise W2SError(f"--labels: store {first.url} labelled {len(a['shards'])} shards, store {other.url} "
                           f"{len(b['shards'])}", option="--labels")
        raise W2SError(f"--labels: stores {first.url} and {other.url} labelled shards whose contents differ "
                       f"(data fingerprints {a.get('fingerprint')} and {b.get('fingerprint')})", option="--labels")


def member_logits(stores: list, name: str) -> tuple[list[str], list[np.ndarray]]:
    """(keys, each member's dense (n, C) logits) of one shard, read once; the members must hold the
    same keys in the same order."""
    keys, members = None, []
    for store in stores:
        rows = store.shard_rows(name, arrays=ShardRows.weak_arrays(store.topk))
        if keys is not None and rows.keys != keys:
            raise W2SError(f"--labels: shard {name} holds other samples in store {store.url} than in {stores[0].url} "
                           "(a sample skipped in one labelling?); label the members with the same --on-bad-sample",
                           option="--labels")
        keys = rows.keys
        members.append(rows.dense_logits(store.num_classes))
    return keys, members


def ensemble_index(stores: list, how: str) -> pa.Table:
    """The ensemble's index (the first member's key, shard, row and label; the combined output's
    pred, confidence, margin, entropy; agreement), in shard order."""
    return ensemble_indexes(stores, (how,))[how]


def ensemble_indexes(stores: list, hows) -> dict[str, pa.Table]:
    """`ensemble_index` for each way of combining in `hows`, every member's shard read once for all."""
    base = stores[0].index()
    parts = {how: [] for how in hows}
    for shard in stores[0].shards:
        if not stores[0].has_shard(shard["name"]):
            continue
        keys, members = member_logits(stores, shard["name"])
        for how in hows:
            combined = combine(members, how)
            stats = {k: v.numpy() for k, v in softmax_stats(torch.from_numpy(combined)).items()}
            parts[how].append({**stats, "agreement": agreement(members, combined), "key": keys})
    return {how: _index_of(base, parts[how], stores[0].url) for how in hows}


def _index_of(base: pa.Table, parts: list[dict], url: str) -> pa.Table:
    if not parts:
        return base.append_column("agreement", pa.array(np.zeros(0, np.int32)))
    joined = {k: np.concatenate([p[k] for p in parts]) for k in ("pred", "confidence", "margin", "entropy", "agreement")}
    order = [k for p in parts for k in p["key"]]
    if order != base.column("key").to_pylist():
        raise W2SError(f"--labels: store {url}'s index is not in its shards' order; run `w2s-pipe verify` on it",
                       option="--labels")
    columns = {"key": base["key"], "shard": base["shard"], "row": base["row"],
               **{k: pa.array(joined[k]) for k in ("pred", "confidence", "margin", "entropy")}}
    if "label" in base.column_names:
        columns["label"] = base["label"]
    columns["agreement"] = pa.array(joined["agreement"])
    return pa.table(columns)

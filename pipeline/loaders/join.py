"""The join: samples in, the same samples out with their stored weak logits attached.

Samples arrive in a shard's tar order, so the j-th sample of a shard is the store's j-th row for
that shard: the join reads the shard's rows once and matches by position, checking every key,
and falls back to a key lookup only when the order differs (a sample missing from the shards).

From a per-view store (`label --views K`, replayed with `views=True`) a sample gets every view's
weak logits (K, C) and boxes (K, 5: top, left, height, width, flip; mixed views add their partner's
position and λ: K, 7); the training stream picks the view of its pass and checks that it draws the
very view, and mix, the weak model saw.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import torch

from ...errors import W2SError
from ...storage.reader import LabelStore, ShardRows
from ...storage.schema import VIEWS
from ..ensembles.registry import is_fixed
from ..sources.shards import url_name
from ..weak.ensemble import combine, member_logits
from ..weak.statistics import softmax_stats


def sample_ids(store) -> tuple[dict[str, int], int]:
    """A store's sample ids (--ensemble learned-sample's rows): ({shard: the id of its first row},
    how many ids): the shards' recorded counts before it, in the store's order, plus the row."""
    counts = [int(s["count"]) for s in store.shards]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int)
    return {s["name"]: int(o) for s, o in zip(store.shards, starts)}, int(sum(counts))


def _kept(mask, row: int) -> bool:
    return mask is not None and row < len(mask) and bool(mask[row])


class StoreJoin:
    """Picklable: each DataLoader worker opens the store itself on first use."""

    def __init__(self, store_url: str, *, skip_missing: bool = False, storage_options: dict | None = None,
                 views: bool = False, keep: dict | None = None, trust: str | None = None,
                 members: tuple = (), ensemble: str | None = None, stacked: bool = False, ids: bool = False,
                 assigner: str | None = None):
        self.store_url = store_url
        self.skip_missing = skip_missing
        self.keep = keep  # selection.Kept.masks: per shard, which rows the run trains on (None: all)
        self.trust = trust  # --weight-by: the stored statistic each sample carries as "trust" (None: none)
        self.members, self.ensemble = tuple(members), ensemble  # an ensemble's stores and how they combine
        self.assigner = assigner  # --specialist-by's store: stacked after the members, combined with none
        self.stacked = stacked  # every member's logits (n, M, C), for weak/members.py, not their combination
        self.ids = ids  # each sample's id: its shard's first row in the store's order, plus its row
        self._members, self._offsets = None, None
        self.views = views  # replay a per-view store's views instead of its centre view
        self.storage_options = storage_options
        self._store: LabelStore | None = None
        self.skipped = 0

    def __getstate__(self):
        return {**self.__dict__, "_store": None, "_members": None, "_offsets": None}

    def offset(self, name: str) -> int:
        """The id of shard `name`'s first row (`sample_ids`)."""
        if self._offsets is None:
            self._offsets = sample_ids(self.store)[0]
        return self._offsets[name]

    @property
    def store(self) -> LabelStore:
        if self._store is None:
            self._store = LabelStore(self.store_url, self.storage_options)
        return self._store

    def shard(self, name: str) -> tuple[list[str], np.ndarray, set, np.ndarray | None] | None:
        """(keys, weak logits (n, C) or with views (n, K, C), keys skipped as bad at labelling, the
        views' boxes (n, K, 5) or None, the --weight-by statistic (n,) or (n, K) or None) of one
        shard, or None if the store lacks the shard and skipping is on."""
        store = self.store
        if not store.has_shard(name):
            if self.skip_missing:
                return None
            raise W2SError(f"shard {name} is not in store {self.store_url} (it labelled {store.attrs['data']['pattern']})")
        if self.members:
            return self._ensemble_shard(name)
        views = store.views if self.views else 0
        prefix = VIEWS if views else ""
        arrays = ShardRows.weak_arrays(store.topk, views, views and store.views_mixed)
        rows = store.shard_rows(name, arrays=arrays + ((prefix + self.trust,) if self.trust else ()))
        trust = rows.arrays[prefix + self.trust] if self.trust else None
        if not self.views:
            return rows.keys, rows.dense_logits(store.num_classes), store.skipped_keys(name), None, trust
        parts = [rows.arrays[f"{VIEWS}crop"], rows.arrays[f"{VIEWS}flip"][..., None]]
        if store.views_mixed:  # and each mixed view's partner (position) and drawn λ
            parts += [rows.arrays[f"{VIEWS}partner"][..., None], rows.arrays[f"{VIEWS}lam"][..., None]]
        boxes = np.concatenate([p.astype(np.float64) for p in parts], axis=-1)
        return rows.keys, rows.dense_logits(store.num_classes, VIEWS), store.skipped_keys(name), boxes, trust

    def _ensemble_shard(self, name: str):
        """`shard` of an ensemble: the members' outputs combined (ensemble.combine), its statistic
        for --weight-by computed from the combination."""
        if self._members is None:
            urls = [*self.members[1:], *([self.assigner] if self.assigner else [])]
            self._members = [self.store] + [LabelStore(url, self.storage_options) for url in urls]
        keys, members = member_logits(self._members, name)
        fixed = self.ensemble if is_fixed(self.ensemble) else "mean-prob"  # the statistic's, if learned
        combined = combine(members[:len(self.members)], fixed)
        trust = None
        if self.trust:
            trust = softmax_stats(torch.from_numpy(combined))[self.trust].numpy()
        weak = np.stack(members, axis=1) if self.stacked else combined
        return keys, weak, self.store.skipped_keys(name), None, trust

    def __call__(self, samples: Iterable[dict]) -> Iterator[dict]:
        current, keys, weak, absent, boxes, trust, lookup, pos, used = None, [], None, set(), None, None, None, 0, set()
        first = 0  # the shard's first sample id (--ensemble learned-sample)
        for sample in samples:
            name, key = url_name(sample["__url__"]), sample["__key__"]
            if name != current:
                current, pos, lookup, used = name, 0, None, set()
                first = self.offset(name) if self.ids else 0
                loaded = self.shard(name)
                keys, weak, absent, boxes, trust = loaded if loaded else ([], None, set(), None, None)
            if pos < len(keys) and keys[pos] == key and pos not in used:
                row = pos
            else:
                if lookup is None:
                    lookup = {k: i for i, k in enumerate(keys)}
                row = lookup.get(key)
                if row is None:
                    if key in absent or None in absent:  # left out as bad when labelling: known, not missing
                        continue
                    if self.skip_missing:
                        self.skipped += 1
                        continue
                    raise W2SError(
                        f"shard {name}, key {key!r} has no row in store {self.store_url}; "
                        "re-label the shards, or pass --skip-missing to train without such samples"
                    )
            if row in used:  # a key repeated in the shard: its row belongs to the first sample
                if key in absent:  # recorded as skipped at labelling
                    continue
                raise W2SError(f"shard {name}, key {key!r} appears more than once in the shard; the store holds one row")
            used.add(row)
            pos = row + 1
            if self.keep is not None and not _kept(self.keep.get(name), row):
                continue  # left out by --select / --keep-frac, before it is decoded
            sample["weak"] = weak[row]
            if boxes is not None:
                sample["view_boxes"] = boxes[row]
            if trust is not None:
                sample["trust"] = trust[row]
            if self.ids:
                sample["id"] = first + row
            yield sample

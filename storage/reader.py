"""Read a store: attributes, the index as an Arrow table, one shard's rows, dask arrays.

Stage two reads one shard's rows as a block and joins by position; `report` and `inspect` use
the index table and the dask arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from ..errors import W2SError
from . import schema
from .fsutil import get_fs, join
from .writer import _zarr_store, done_shards, read_markers


@dataclass
class ShardRows:
    """One shard's stored rows, in the shard's sample order."""

    name: str
    keys: list[str]
    arrays: dict[str, np.ndarray]  # logits (n, C) or topk_values/topk_indices (n, K); pred, confidence, ...
    labels: np.ndarray | None

    WEAK_ARRAYS = {"full": ("logits",), "topk": ("topk_values", "topk_indices", "confidence")}

    def dense_logits(self, num_classes: int) -> np.ndarray:
        """(n, C) weak logits; from a top-k store, log-probabilities rebuilt from the top k.

        The top-k probabilities are exact: p_i = confidence * exp(v_i - v_1), since confidence is
        the top-1 probability of the full softmax. The remaining mass is spread evenly over the
        other C - k classes. Log-probabilities are logits up to a constant, which softmax ignores.
        """
        if "logits" in self.arrays:
            return self.arrays["logits"]
        values = self.arrays["topk_values"].astype(np.float32)
        indices = self.arrays["topk_indices"].astype(np.int64)
        n, k = values.shape
        p_top = self.arrays["confidence"].astype(np.float32)[:, None] * np.exp(values - values[:, :1])
        rest = np.maximum(1.0 - p_top.sum(axis=1), 1e-8) / max(1, num_classes - k)
        out = np.repeat(np.log(rest)[:, None], num_classes, axis=1).astype(np.float32)
        np.put_along_axis(out, indices, np.log(np.maximum(p_top, 1e-30)), axis=1)
        return out


class LabelStore:
    def __init__(self, url: str, storage_options: dict | None = None):
        self.url = str(url)
        self.storage_options = storage_options
        self.fs, self.path = get_fs(self.url, storage_options)
        if not self.fs.exists(join(self.path, "zarr.json")):
            raise W2SError(f"no pseudo-label store at {self.url} (run `w2s-pipe label` first, or check --labels)")
        self.group = zarr.open_group(store=_zarr_store(self.url, storage_options, read_only=True), mode="r")
        self.attrs = dict(self.group.attrs)
        self._validate()
        self.num_classes = int(self.attrs["num_classes"])
        self.topk = self.attrs["layout"].get("topk")
        self.capacity = int(self.attrs["layout"]["capacity"])
        self.shards = self.attrs["data"]["shards"]
        self._shard_pos = {s["name"]: i for i, s in enumerate(self.shards)}
        self._index = None
        self._all_done = None
        self._counts = None
        self._markers = None

    def _validate(self):
        a = self.attrs
        if a.get("format") != schema.FORMAT:
            raise W2SError(f"store {self.url}: attribute 'format' is {a.get('format')!r}, expected {schema.FORMAT!r}")
        if a.get("schema_version") != schema.SCHEMA_VERSION:
            raise W2SError(
                f"store {self.url}: attribute 'schema_version' is {a.get('schema_version')!r}, this tool reads "
                f"{schema.SCHEMA_VERSION}; re-label with this version"
            )
        for key in schema.REQUIRED_ATTRS:
            if key not in a:
                raise W2SError(f"store {self.url}: attribute {key!r} is missing")
        rows = int(a["layout"]["rows"])
        for name, (dtype, row_shape) in schema.all_arrays(int(a["num_classes"]), a["layout"].get("topk")).items():
            if name not in self.group:
                raise W2SError(f"store {self.url}: array {name!r} is missing")
            arr = self.group[name]
            if str(arr.dtype) != dtype or tuple(arr.shape) != (rows, *row_shape):
                raise W2SError(
                    f"store {self.url}: array {name!r} is {arr.dtype}{tuple(arr.shape)}, expected {dtype}{(rows, *row_shape)}"
                )

    # -- completeness -------------------------------------------------------------------------
    def done_shards(self) -> set[int]:
        # Completion only grows, so once every shard is done the listing need not be repeated
        # (it is one LIST request per shard read on object storage otherwise).
        if self._all_done is None:
            done = done_shards(self.fs, self.path)
            if len(done) < len(self.shards):
                return done
            self._all_done = done
        return self._all_done

    def missing_shards(self) -> list[str]:
        done = self.done_shards()
        return [s["name"] for i, s in enumerate(self.shards) if i not in done]

    @property
    def complete(self) -> bool:
        return self.fs.exists(join(self.path, schema.INDEX_FILE)) and not self.missing_shards()

    def require_complete(self):
        missing = self.missing_shards()
        if missing or not self.fs.exists(join(self.path, schema.INDEX_FILE)):
            what = f"{len(missing)} of {len(self.shards)} shards unlabelled (first: {missing[0]})" if missing else "no index.parquet"
            raise W2SError(f"store {self.url} is incomplete: {what}; re-run the same `w2s-pipe label` command to finish it")

    # -- reading ------------------------------------------------------------------------------
    @property
    def labelled_counts(self) -> list[int]:
        """Rows of each shard: its samples less those skipped as bad (from the completion markers)."""
        if self._counts is None:
            self.require_complete()
            self._markers = read_markers(self.fs, self.path, len(self.shards))
            self._counts = [int(m["count"]) for m in self._markers]
        return self._counts

    @property
    def num_samples(self) -> int:
        return sum(self.labelled_counts)

    def skipped_keys(self, shard: str | int) -> set:
        """Keys of one shard recorded as skipped (None stands for the whole shard)."""
        self.labelled_counts  # loads the markers
        return {s["key"] for s in self._markers[self.shard_position(shard)].get("skipped", [])}

    def skipped(self) -> pa.Table:
        """Samples left out as bad (key, shard, reason); key is null for a whole unreadable shard."""
        self.require_complete()
        path = join(self.path, schema.SKIPPED_FILE)
        if not self.fs.exists(path):
            return pa.Table.from_pylist([], schema=schema.SKIPPED_SCHEMA)
        with self.fs.open(path, "rb") as f:
            return pq.read_table(f)

    def index(self) -> pa.Table:
        """All index rows in shard order (key, shard, row, pred, confidence, margin, entropy[, label])."""
        if self._index is None:
            self.require_complete()
            with self.fs.open(join(self.path, schema.INDEX_FILE), "rb") as f:
                self._index = pq.read_table(f)
        return self._index

    def shard_position(self, shard: str | int) -> int:
        if isinstance(shard, int):
            return shard
        try:
            return self._shard_pos[shard]
        except KeyError:
            raise W2SError(f"store {self.url} has no shard named {shard!r}") from None

    def shard_rows(self, shard: str | int, arrays: tuple[str, ...] | None = None) -> ShardRows:
        """One shard's rows as one block read per array (never row by row); `arrays` limits the
        arrays read (the training join needs only the logits)."""
        i = self.shard_position(shard)
        if i not in self.done_shards():
            raise W2SError(f"store {self.url}: shard {self.shards[i]['name']} is not labelled yet")
        with self.fs.open(schema.shard_file(join(self.path, schema.PARTS_DIR), i, ".parquet"), "rb") as f:
            part = pq.read_table(f)
        n = part.num_rows
        start = i * self.capacity
        names = arrays or tuple(schema.all_arrays(self.num_classes, self.topk))
        blocks = {name: self.group[name][start : start + n] for name in names}
        labels = part.column("label").to_numpy() if "label" in part.column_names else None
        return ShardRows(self.shards[i]["name"], part.column("key").to_pylist(), blocks, labels)

    def dask_arrays(self) -> dict:
        """Each array as a dask array over the labelled rows only (padding dropped), in shard order."""
        import dask.array as da

        out = {}
        for name in schema.all_arrays(self.num_classes, self.topk):
            full = da.from_zarr(self.group[name])
            out[name] = da.concatenate(
                [full[i * self.capacity : i * self.capacity + n] for i, n in enumerate(self.labelled_counts)]
            )
        return out

    def size_bytes(self) -> int:
        return int(self.fs.du(self.path))


def open_store(url: str, storage_options: dict | None = None) -> LabelStore:
    return LabelStore(url, storage_options)


def latest_store(stores_dir: str) -> str | None:
    """The most recently completed store under a workspace's stores/ directory, if any."""
    fs, path = get_fs(stores_dir)
    if not fs.exists(path):
        return None
    best, best_time = None, None
    for entry in fs.ls(path, detail=True):
        index = join(entry["name"], schema.INDEX_FILE)
        if entry.get("type") == "directory" and fs.exists(index):
            mtime = fs.info(index).get("mtime") or fs.info(index).get("LastModified")
            if best_time is None or mtime > best_time:
                best, best_time = entry["name"], mtime
    return best

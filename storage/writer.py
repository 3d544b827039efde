"""Create a store, write one shard at a time (rows, then index part, then marker), finalize it.

Safe for many writers at once as long as each shard has one writer (torchrun ranks take disjoint
shards): no two shards share a Zarr chunk, every shard's files are its own, and only the creator
writes group metadata. A crash loses at most the shards whose markers were not yet written.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import time
import warnings

import numpy as np
import pyarrow as pa
import zarr

from ..errors import W2SError
from . import schema
from .claims import create_exclusive, pid_alive, read_holder
from .files import MarkerError, cut_short, done_shards, index_from_parts, read_markers, table_bytes, zarr_store
from .fsutil import atomic_write, check_writable, get_fs, is_local, join


def identity_mismatch(existing: dict, wanted: dict) -> str | None:
    """The first identity field on which two stores' attributes differ, described for the user."""
    for field in schema.IDENTITY_FIELDS:
        if field == "preprocessing":
            old, new = schema.preprocessing(existing), schema.preprocessing(wanted)
        elif field == "views":
            old, new = schema.views_meta(existing), schema.views_meta(wanted)
        else:
            old, new = schema.get_field(existing, field), schema.get_field(wanted, field)
        if json.dumps(old, sort_keys=True) != json.dumps(new, sort_keys=True):
            if field == "data.fingerprint":
                return "the data source differs (shard names or sizes changed)"
            return f"{field} is {json.dumps(old)} in the store but {json.dumps(new)} in this run"
    return None


def another_job(url: str, problem: str, attrs: dict) -> W2SError:
    """The error for a store at `url` made by another job than the one about to write it."""
    kind, path = ("feature store", "--out") if schema.feature_width(attrs) else ("store", "--labels")
    return W2SError(f"{kind} {url} was made by another job: {problem}; give another {path} PATH to keep both, or "
                    "--overwrite to replace it", option=path)


@contextlib.contextmanager
def creation_lock(path: str, wait_s: float = 600.0):
    """Exclusive creation of a local store: `<store>.creating`, created exclusively beside it (with its
    holder's host and pid in it from the start), held while one process checks or creates the
    store. Another process started at the same moment waits for it, then finds the store made and
    shares its shards. A lock whose holder died (same host), or older than `wait_s` (another host),
    is taken over."""
    lock = path.rstrip("/") + ".creating"
    os.makedirs(os.path.dirname(lock) or ".", exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    deadline = time.time() + wait_s
    while not create_exclusive(lock, me):
        holder = read_holder(lock)
        try:
            age = time.time() - os.path.getmtime(lock)
        except FileNotFoundError:
            continue
        dead = holder is not None and holder.get("host") == me["host"] and not pid_alive(holder.get("pid"))
        if dead or age > wait_s or (holder is None and age > 30):
            try:
                os.unlink(lock)
            except FileNotFoundError:
                pass
            continue
        if time.time() > deadline:
            raise W2SError(f"store {path} is being created by {holder} for over {wait_s:.0f} s; remove {lock} if "
                           "that process is gone") from None
        time.sleep(0.05)
    try:
        yield
    finally:
        try:
            os.unlink(lock)
        except FileNotFoundError:
            pass


def begin_store(url: str, attrs: dict, existing=None, *, overwrite: bool = False,
                storage_options: dict | None = None) -> "StoreWriter | None":
    """Where a label job begins, decided once (by one process): None when `existing` (the
    reader's `LabelStore` at `url`, or None) is complete and was made by this same job, which is
    then checked, never written: its rows against their markers, its index against its parts.
    Otherwise the store's writer: created (or, with `overwrite`, made again), or this job's
    unfinished store reused. A store of another job is a one-line error."""
    if existing is not None and existing.complete:
        problem = identity_mismatch(existing.attrs, {"format": existing.attrs.get("format"), **attrs})
        if problem:
            raise another_job(url, problem, attrs)
        existing.check_rows()
        existing.check_index()
        return None
    check_writable(url, "label: the store")  # a finished store reads from a read-only mount; a new one cannot be written there
    return StoreWriter.create(url, attrs, overwrite=overwrite, storage_options=storage_options)


class StoreWriter:
    """Writes shards into a store whose arrays were preallocated by `create`."""

    def __init__(self, url: str, storage_options: dict | None = None):
        self.url = str(url)
        self.storage_options = storage_options
        self.fs, self.path = get_fs(self.url, storage_options)
        self.group = zarr.open_group(store=zarr_store(self.url, storage_options), mode="r+")
        self.attrs = dict(self.group.attrs)
        layout = self.attrs["layout"]
        self.capacity = int(layout["capacity"])
        self.shards = self.attrs["data"]["shards"]
        self.views = schema.layout_views(self.attrs)
        self.arrays = schema.store_arrays(self.attrs)

    @classmethod
    def create(cls, url: str, attrs: dict, *, overwrite: bool = False, storage_options: dict | None = None):
        """Open the store at `url` for this job, creating and preallocating it if needed.

        `attrs` must hold every schema.REQUIRED_ATTRS entry except format, schema_version and
        created. An existing store is reused only if its identity matches; else it is an error
        unless `overwrite`, which deletes it first.
        """
        fs, path = get_fs(url, storage_options)
        if is_local(fs):
            with creation_lock(path):
                return cls._create(url, attrs, overwrite=overwrite, storage_options=storage_options)
        return cls._create(url, attrs, overwrite=overwrite, storage_options=storage_options)

    @classmethod
    def _create(cls, url: str, attrs: dict, *, overwrite: bool = False, storage_options: dict | None = None):
        fs, path = get_fs(url, storage_options)
        attrs = {"format": schema.FORMAT, "schema_version": schema.SCHEMA_VERSION, **attrs}
        if fs.exists(path):
            if fs.exists(join(path, "zarr.json")) and not overwrite:
                existing = dict(zarr.open_group(store=zarr_store(url, storage_options, True), mode="r").attrs)
                if cut_short(fs, path, existing):
                    # A creation cut short (attributes are written last, and no shard can have been
                    # labelled before them): start it again.
                    fs.rm(path, recursive=True)
                    return cls._create(url, attrs, overwrite=False, storage_options=storage_options)
                if existing.get("format") != schema.FORMAT:
                    raise W2SError(f"{url} is a Zarr group but not a w2s-pipe store; choose another --labels")
                problem = identity_mismatch(existing, attrs)
                if problem:
                    raise another_job(url, problem, attrs)
                return cls(url, storage_options)
            if overwrite:
                fs.rm(path, recursive=True)
            elif fs.ls(path):
                raise W2SError(f"{url} exists and is not a w2s-pipe store; choose another --labels or remove it")
        attrs["created"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        missing = [k for k in schema.REQUIRED_ATTRS if k not in attrs]
        if missing:
            raise ValueError(f"store attributes missing: {missing}")
        layout = attrs["layout"]
        rows, capacity = int(layout["rows"]), int(layout["capacity"])
        group = zarr.open_group(store=zarr_store(url, storage_options), mode="w")
        for name, (dtype, row_shape) in schema.store_arrays(attrs).items():
            group.create_array(
                name,
                shape=(rows, *row_shape),
                chunks=(capacity, *row_shape),
                dtype=dtype,
                # Logits are near-incompressible (zstd 1.09x) and uncompressed chunks read 2-3x
                # faster (DESIGN.md; bench/store.py measures it again): no codec.
                compressors=None,
                fill_value=schema.fill_value(name),
            )
        # Attributes last, in one write (attrs.update would write zarr.json once per key): a group
        # without them is recognisably unfinished and is rebuilt.
        group.update_attributes(attrs)
        for directory in (schema.PARTS_DIR, schema.DONE_DIR):
            if is_local(fs):
                fs.makedirs(join(path, directory), exist_ok=True)
        return cls(url, storage_options)

    def done_shards(self) -> set[int]:
        return done_shards(self.fs, self.path)

    def write_shard(self, index: int, keys: list[str], labels: np.ndarray | None, arrays: dict[str, np.ndarray],
                    skipped: list[dict] | None = None):
        """Write shard `index`'s rows (in the shard's sample order), its index part, then its marker.

        `skipped`: {"key", "reason"} of samples left out as bad; with the rows they make up the
        shard's sample count (a whole unreadable shard is one entry with key None).
        """
        shard = self.shards[index]
        skipped = skipped or []
        n = len(keys)
        whole_shard = any(s["key"] is None for s in skipped)
        if not whole_shard and n + len(skipped) != shard["count"]:
            raise W2SError(
                f"shard {shard['url']}: read {n + len(skipped)} samples but the data source lists {shard['count']}; "
                "the shard changed since it was counted (re-run prepare, or label into a new store)"
            )
        if len(set(keys)) != n:
            seen, dup = set(), None
            for k in keys:
                if k in seen:
                    dup = k
                    break
                seen.add(k)
            raise W2SError(f"shard {shard['url']}: key {dup!r} appears more than once")
        if set(arrays) != set(self.arrays):
            raise ValueError(f"write_shard needs arrays {sorted(self.arrays)}, got {sorted(arrays)}")
        start = index * self.capacity
        rows = {}
        for name, (dtype, row_shape) in self.arrays.items():
            values = np.asarray(arrays[name])
            if values.shape != (n, *row_shape):
                raise ValueError(f"array {name}: shape {values.shape}, expected {(n, *row_shape)}")
            block = np.full((self.capacity, *row_shape), schema.fill_value(name), dtype=dtype)
            block[:n] = values
            # Whole-chunk write: no read-modify-write, and the chunk is this shard's alone.
            self.group[name][start : start + self.capacity] = block
            rows[name] = block[:n]
        columns = {
            "key": pa.array(keys, pa.string()),
            "shard": pa.array([shard["name"]] * n, pa.string()),
            "row": pa.array(np.arange(start, start + n, dtype=np.int64)),
            **{name: pa.array(np.asarray(arrays[name], dtype=dt_)) for name, dt_ in schema.STAT_ARRAYS.items()
               if name in self.arrays},  # a feature store's index has no statistics
        }
        with_label = labels is not None
        if with_label:
            columns["label"] = pa.array(np.asarray(labels, dtype=np.int32))
        table = pa.table(columns, schema=schema.index_schema(with_label, stats="pred" in self.arrays))
        atomic_write(self.fs, schema.shard_file(join(self.path, schema.PARTS_DIR), index, ".parquet"), table_bytes(table))
        marker = {"shard": shard["name"], "start": start, "count": n, "sha256": schema.shard_digest(keys, rows),
                  "skipped": skipped}
        atomic_write(self.fs, schema.shard_file(join(self.path, schema.DONE_DIR), index, ".json"), json.dumps(marker).encode())

    def markers(self) -> list[dict]:
        """Every shard's completion marker, in shard order (all shards must be done)."""
        return read_markers(self.fs, self.path, len(self.shards))

    def finalize(self) -> bool:
        """Write index.parquet and consolidate metadata if every shard is done; True if complete."""
        if len(self.done_shards()) < len(self.shards):
            return False
        index = index_from_parts(self.fs, self.path, len(self.shards), stats="pred" in self.arrays)
        try:
            markers = self.markers()
        except MarkerError as exc:
            raise W2SError(f"store {self.url}: {exc.file} is damaged ({exc.__cause__}); `label --overwrite` makes the "
                           "store again") from None
        skipped = [{"key": s["key"], "shard": m["shard"], "reason": s["reason"]} for m in markers for s in m.get("skipped", [])]
        atomic_write(self.fs, join(self.path, schema.SKIPPED_FILE),
                     table_bytes(pa.Table.from_pylist(skipped, schema=schema.SKIPPED_SCHEMA)))
        atomic_write(self.fs, join(self.path, schema.INDEX_FILE), table_bytes(index))
        with warnings.catch_warnings():
            # zarr warns that parts/, done/ and index.parquet are not Zarr nodes (by design), and
            # that consolidated metadata is not yet in the v3 spec.
            warnings.simplefilter("ignore", category=UserWarning)
            zarr.consolidate_metadata(zarr_store(self.url, self.storage_options))
        return True

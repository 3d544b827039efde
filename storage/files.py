"""The store's files as reader and writer both see them: the Zarr group, the completion markers and
the index parts. Knows nothing of torch.
"""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from ..errors import W2SError
from . import schema
from .fsutil import get_fs, is_local, join


def zarr_store(url: str, storage_options: dict | None, read_only: bool = False):
    """The Zarr store object for a local path (LocalStore) or an fsspec URL (FsspecStore)."""
    fs, path = get_fs(url, storage_options)
    if is_local(fs):
        return zarr.storage.LocalStore(path, read_only=read_only)
    return zarr.storage.FsspecStore.from_url(str(url), storage_options=storage_options or {}, read_only=read_only)


def table_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def done_shards(fs, path: str) -> set[int]:
    """Positions of the shards whose completion marker exists."""
    done_dir = join(path, schema.DONE_DIR)
    # Other processes write markers: a cached listing (s3fs keeps them) would hide theirs.
    fs.invalidate_cache(done_dir)
    if not fs.exists(done_dir):
        return set()
    names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(done_dir, detail=False)]
    return {int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit()}


class MarkerError(ValueError):
    def __init__(self, file: str):
        super().__init__(file)
        self.file = file


def read_markers(fs, path: str, n_shards: int) -> list[dict]:
    """Every shard's completion marker, checked to be one: a damaged one raises MarkerError naming
    its file (relative to the store), with the cause chained."""
    paths = [schema.shard_file(join(path, schema.DONE_DIR), i, ".json") for i in range(n_shards)]
    blobs = fs.cat(paths, on_error="return")
    out = []
    for i, p in enumerate(paths):
        try:
            blob = blobs[p]
            if isinstance(blob, Exception):
                raise blob
            marker = json.loads(blob)
            if not (isinstance(marker, dict) and isinstance(marker.get("count"), int) and marker["count"] >= 0
                    and isinstance(marker.get("sha256"), str) and isinstance(marker.get("skipped", []), list)):
                raise ValueError("not a completion marker")
        except Exception as exc:
            raise MarkerError(schema.shard_file(schema.DONE_DIR, i, ".json")) from exc
        out.append(marker)
    return out


def index_from_parts(fs, path: str, n_shards: int, stats: bool = True) -> pa.Table:
    """index.parquet as it should be: the shards' index parts, concatenated in shard order (with
    the statistics' columns but in a feature store: `stats` False). A part that cannot be read is a
    one-line error naming it."""
    parts_dir = join(path, schema.PARTS_DIR)
    paths = [schema.shard_file(parts_dir, i, ".parquet") for i in range(n_shards)]
    blobs = fs.cat(paths, on_error="return")
    tables = []
    for i, p in enumerate(paths):
        try:
            if isinstance(blobs[p], Exception):
                raise blobs[p]
            tables.append(pq.read_table(pa.BufferReader(blobs[p])))
        except Exception as exc:  # pyarrow and the filesystem raise many types
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise W2SError(f"store {path}: {schema.shard_file(schema.PARTS_DIR, i, '.parquet')} is damaged or "
                           f"unreadable ({why}); `label --overwrite` makes the store again") from None
    with_label = all("label" in t.column_names for t in tables if t.num_rows) and any(t.num_rows for t in tables)
    target = schema.index_schema(with_label, stats)
    try:
        tables = [t.select(target.names).cast(target) if t.num_rows else target.empty_table() for t in tables]
    except (KeyError, ValueError, pa.ArrowInvalid) as exc:
        raise W2SError(f"store {path}: an index part under {schema.PARTS_DIR}/ has other columns than label writes "
                       f"({exc})") from None
    return pa.concat_tables(tables)


def cut_short(fs, path: str, attrs: dict) -> bool:
    """Whether the group at `path` with `attrs` is a store's creation cut short, which `label`
    rebuilds: no attributes, or (a version before 2026-11-30 wrote them one key at a time) some of
    ours without the rest and without the done/ directory that creation makes after them."""
    if not attrs:
        return True
    partial = attrs.get("format") == schema.FORMAT and any(k not in attrs for k in schema.REQUIRED_ATTRS)
    return partial and not fs.exists(join(path, schema.DONE_DIR))

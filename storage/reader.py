"""Read a store: attributes, the index as an Arrow table, one shard's rows, dask arrays.

Stage two reads one shard's rows as a block and joins by position; `report` and `inspect` use
the index table and the dask arrays.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from ..errors import W2SError
from . import schema
from .files import MarkerError, cut_short, done_shards, index_from_parts, read_markers, zarr_store
from .fsutil import get_fs, join


@dataclass
class ShardRows:
    """One shard's stored rows, in the shard's sample order."""

    name: str
    keys: list[str]
    arrays: dict[str, np.ndarray]  # logits (n, C) or topk_values/topk_indices (n, K); pred, confidence, ...
    labels: np.ndarray | None

    WEAK_ARRAYS = {"full": ("logits",), "topk": ("topk_values", "topk_indices", "confidence")}

    @staticmethod
    def weak_arrays(topk: int | None, views: int = 0, mixed: bool = False) -> tuple[str, ...]:
        """The arrays the training join reads: the weak logits (or top-k and the confidence that
        rebuilds them), and of a per-view store the views' too, with their boxes and flips (and
        mixed views' partners and weights)."""
        names = ShardRows.WEAK_ARRAYS["topk" if topk else "full"]
        if not views:
            return names
        mixing = (f"{schema.VIEWS}partner", f"{schema.VIEWS}lam") if mixed else ()
        return (*names, *(schema.VIEWS + n for n in names), f"{schema.VIEWS}crop", f"{schema.VIEWS}flip", *mixing)

    def dense_logits(self, num_classes: int, prefix: str = "") -> np.ndarray:
        """(n, C) weak logits (with prefix "views/": (n, K, C), each view's); from a top-k store,
        log-probabilities rebuilt from the top k.

        The top-k probabilities are exact: p_i = confidence * exp(v_i - v_1), since confidence is
        the top-1 probability of the full softmax. The remaining mass is spread evenly over the
        other C - k classes. Log-probabilities are logits up to a constant, which softmax ignores.
        """
        if prefix + "logits" in self.arrays:
            return self.arrays[prefix + "logits"]
        values = self.arrays[prefix + "topk_values"].astype(np.float32)
        indices = self.arrays[prefix + "topk_indices"].astype(np.int64)
        k = values.shape[-1]
        p_top = self.arrays[prefix + "confidence"].astype(np.float32)[..., None] * np.exp(values - values[..., :1])
        rest = np.maximum(1.0 - p_top.sum(axis=-1), 1e-8) / max(1, num_classes - k)
        out = np.repeat(np.log(rest)[..., None], num_classes, axis=-1).astype(np.float32)
        np.put_along_axis(out, indices, np.log(np.maximum(p_top, 1e-30)), axis=-1)
        return out


class LabelStore:
    def __init__(self, url: str, storage_options: dict | None = None):
        self.url = str(url)
        self.storage_options = storage_options
        self.fs, self.path = get_fs(self.url, storage_options)
        if not self.fs.exists(join(self.path, "zarr.json")):
            raise W2SError(f"no pseudo-label store at {self.url} (run `w2s-pipe label` first, or check the store path)")
        try:
            # Each array's own metadata, not the consolidated copy in zarr.json, which would hide
            # a damaged or missing <array>/zarr.json.
            self.group = zarr.open_group(store=zarr_store(self.url, storage_options, read_only=True), mode="r",
                                         use_consolidated=False)
            self.attrs = dict(self.group.attrs)
        except Exception as exc:  # zarr and json raise many types for a damaged file
            raise self.damaged("zarr.json", exc) from None
        self._validate()
        self.num_classes = int(self.attrs["num_classes"])
        self.topk = self.attrs["layout"].get("topk")
        self.views = schema.layout_views(self.attrs)  # views per sample (0: centre only)
        self.views_mixed = schema.views_mixed(self.attrs)  # the views are mixed with partners of their shard
        self.features = schema.feature_width(self.attrs)  # a feature store's width D (0: a label store)
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
        if a.get("schema_version") not in schema.READABLE_VERSIONS:
            raise W2SError(
                f"store {self.url}: attribute 'schema_version' is {a.get('schema_version')!r}, this tool reads "
                f"{' and '.join(map(str, schema.READABLE_VERSIONS))}; re-label with this version"
            )
        for key in schema.REQUIRED_ATTRS:
            if key not in a:
                raise W2SError(f"store {self.url}: attribute {key!r} is missing (zarr.json)")
        try:
            rows, capacity = int(a["layout"]["rows"]), int(a["layout"]["capacity"])
            arrays = schema.store_arrays(a)
            if rows != capacity * len(a["data"]["shards"]):
                raise ValueError(f"layout rows {rows} is not capacity {capacity} x {len(a['data']['shards'])} shards")
        except (KeyError, TypeError, ValueError) as exc:
            raise self.damaged("zarr.json", exc) from None
        for name, (dtype, row_shape) in arrays.items():
            try:
                arr = self.group[name]
            except KeyError:
                raise W2SError(f"store {self.url}: array {name!r} is missing ({name}/zarr.json)") from None
            except Exception as exc:
                raise self.damaged(f"{name}/zarr.json", exc) from None
            if str(arr.dtype) != dtype or tuple(arr.shape) != (rows, *row_shape):
                raise W2SError(f"store {self.url}: array {name!r} is {arr.dtype}{tuple(arr.shape)}, expected "
                               f"{dtype}{(rows, *row_shape)} ({name}/zarr.json)")
            # What `label` writes: one chunk per shard, little-endian. Anything else reads other rows
            # or other numbers than were written.
            endian = [getattr(getattr(c, "endian", None), "value", "little") for c in arr.metadata.codecs]
            if tuple(arr.chunks) != (capacity, *row_shape) or any(e not in ("little", None) for e in endian):
                raise W2SError(f"store {self.url}: array {name!r} has chunks {tuple(arr.chunks)} and byte order "
                               f"{'/'.join(map(str, endian))}; label writes chunks {(capacity, *row_shape)}, little-endian "
                               f"({name}/zarr.json or the capacity in zarr.json was changed)")

    def damaged(self, file: str, exc: BaseException) -> W2SError:
        """The one-line error for a file of this store that cannot be read as what it should be."""
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        return W2SError(f"store {self.url}: {file} is damaged or unreadable ({why}); `w2s-pipe verify {self.url}` "
                        "checks the whole store, and `label --overwrite` makes it again")

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

    @property
    def kind(self) -> str:
        return "feature store" if self.features else "label store"

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
            try:
                self._markers = read_markers(self.fs, self.path, len(self.shards))
            except MarkerError as exc:
                raise self.damaged(exc.file, exc.__cause__ or exc) from None
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
        return self._parquet(schema.SKIPPED_FILE)

    def _parquet(self, file: str) -> pa.Table:
        try:
            with self.fs.open(join(self.path, file), "rb") as f:
                return pq.read_table(f)
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a damaged file
            raise self.damaged(file, exc) from None

    def index(self) -> pa.Table:
        """All index rows in shard order (key, shard, row, pred, confidence, margin, entropy[, label])."""
        if self._index is None:
            self.require_complete()
            index = self._parquet(schema.INDEX_FILE)
            if index.num_rows != self.num_samples:
                self._count_mismatch()  # a marker that disagrees with its shard's part, named
            needed = {"key", "shard", "row"} | (set() if self.features else {"pred"})
            if index.num_rows != self.num_samples or not needed <= set(index.column_names):
                raise self.damaged(schema.INDEX_FILE, ValueError(
                    f"{index.num_rows} rows with columns {', '.join(index.column_names)}; the markers (done/*.json) "
                    f"count {self.num_samples} samples"))
            self._index = index
        return self._index

    def has_shard(self, name: str) -> bool:
        """Whether the store's data source lists a shard of this name (labelled or not)."""
        return name in self._shard_pos

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
        part_file = schema.shard_file(schema.PARTS_DIR, i, ".parquet")
        part = self._parquet(part_file)
        if "key" not in part.column_names:
            raise self.damaged(part_file, ValueError("no key column"))
        n = part.num_rows
        start = i * self.capacity
        names = arrays or tuple(schema.store_arrays(self.attrs))
        blocks = {}
        for name in names:
            try:
                blocks[name] = self.group[name][start : start + n]
            except Exception as exc:  # a truncated or rewritten chunk
                raise self.damaged(f"{name}/c/{i}" + "/0" * (self.group[name].ndim - 1), exc) from None
        labels = part.column("label").to_numpy() if "label" in part.column_names else None
        return ShardRows(self.shards[i]["name"], part.column("key").to_pylist(), blocks, labels)

    def _count_mismatch(self) -> None:
        """Raise naming the first shard whose marker's count differs from its index part's rows."""
        for i, count in enumerate(self.labelled_counts):
            part_file = schema.shard_file(schema.PARTS_DIR, i, ".parquet")
            try:
                with self.fs.open(join(self.path, part_file), "rb") as f:
                    rows = pq.ParquetFile(f).metadata.num_rows
            except Exception as exc:
                raise self.damaged(part_file, exc) from None
            if rows != count:
                done = schema.shard_file(schema.DONE_DIR, i, ".json")
                raise W2SError(f"store {self.url}, shard {self.shards[i]['name']}: {rows} rows in {part_file} but "
                               f"{count} in {done}; `w2s-pipe verify {self.url}` lists every problem")

    def check_index(self) -> None:
        """index.parquet is the concatenation of the shards' index parts, as `label` wrote it."""
        index = self.index()
        expected = index_from_parts(self.fs, self.path, len(self.shards), stats=not self.features)
        if not index.equals(expected):
            differ = [c for c in expected.column_names if c not in index.column_names
                      or not index.column(c).equals(expected.column(c))]
            raise W2SError(f"store {self.url}: index.parquet differs from the shards' parts "
                           f"({', '.join(differ) or 'schema'}); `w2s-pipe verify {self.url}` lists every problem")

    def checked_rows(self, shard: str | int) -> ShardRows:
        """`shard_rows` with every array, checked against what `label` wrote: the completion marker's
        row count and sha256, and finite logits. A difference is a one-line error naming the store,
        the shard (and the key, for a value that is not finite)."""
        i = self.shard_position(shard)
        marker = self.markers()[i]
        rows = self.shard_rows(i)
        name, done = self.shards[i]["name"], schema.shard_file(schema.DONE_DIR, i, ".json")
        if len(rows.keys) != int(marker["count"]):
            raise W2SError(f"store {self.url}, shard {name}: {len(rows.keys)} rows in "
                           f"{schema.shard_file(schema.PARTS_DIR, i, '.parquet')} but {marker['count']} in {done}; "
                           f"`w2s-pipe verify {self.url}` lists every problem")
        if schema.shard_digest(rows.keys, rows.arrays) != marker.get("sha256"):
            raise W2SError(f"store {self.url}, shard {name}: the stored rows are not the ones `label` wrote (their "
                           f"sha256 differs from {done}'s); `w2s-pipe verify {self.url}` lists every problem, and "
                           "`label --overwrite` makes the store again")
        for prefix in ("", schema.VIEWS) if self.views else ("",):
            array = schema.FEATURES if self.features else prefix + (
                "logits" if "logits" in rows.arrays else "topk_values")
            values = rows.arrays[array]
            bad = ~np.isfinite(values.astype(np.float32)).reshape(len(values), -1).all(axis=1)
            if bad.any():
                what = "features" if self.features else "weak logits" + (" of a view" if prefix else "")
                raise W2SError(f"store {self.url}, shard {name}, key {rows.keys[int(np.argmax(bad))]!r}: the {what} "
                               "are not finite")
        return rows

    def check_rows(self, shards=None, threads: int = 8) -> None:
        """`checked_rows` for the given shards (default all), a few at a time: the checks a run does
        before it trusts the store. Raises the first problem in shard order."""
        positions = [self.shard_position(s) for s in (shards if shards is not None else range(len(self.shards)))]
        self.markers()
        with ThreadPoolExecutor(max_workers=max(1, min(threads, len(positions)))) as pool:
            for _ in pool.map(self.checked_rows, positions):
                pass

    def markers(self) -> list[dict]:
        """Every shard's completion marker (the store must be complete)."""
        self.labelled_counts
        return self._markers

    def dask_arrays(self) -> dict:
        """Each array as a dask array over the labelled rows only (padding dropped), in shard order."""
        import dask.array as da  # lazy: dask's arrays load only for statistics over a store

        out = {}
        for name in schema.store_arrays(self.attrs):
            full = da.from_zarr(self.group[name])
            out[name] = da.concatenate(
                [full[i * self.capacity : i * self.capacity + n] for i, n in enumerate(self.labelled_counts)]
            )
        return out

    def size_bytes(self) -> int:
        """Bytes of the store's files. A file that vanishes while they are summed (another labeller's
        temporary file, renamed as it finalizes the same store) is not counted, not an error."""
        total = 0
        for path in self.fs.find(self.path):
            try:
                total += int(self.fs.size(path))
            except FileNotFoundError:
                pass
        return total


def open_store(url: str, storage_options: dict | None = None) -> LabelStore:
    return LabelStore(url, storage_options)


def existing_store(url: str, storage_options: dict | None = None) -> LabelStore | None:
    """The store already at `url` (opened and its metadata checked), or None where there is none yet,
    or only a creation cut short (`cut_short`, which `StoreWriter.create` rebuilds).
    Anything else there that is not a readable store is a one-line error naming the file."""
    fs, path = get_fs(url, storage_options)
    if not fs.exists(join(path, "zarr.json")):
        return None
    try:
        return LabelStore(url, storage_options)
    except W2SError:
        try:
            group = zarr.open_group(store=zarr_store(url, storage_options, True), mode="r", use_consolidated=False)
            if cut_short(fs, path, dict(group.attrs)):
                return None
        except Exception:  # the store's own error below says what is wrong
            pass
        raise


def pick_store(stores_dir: str, data: str | None = None, split: str | None = None) -> tuple[str | None, str]:
    """The store `train` uses without --labels: the one complete store under a workspace's stores/
    (of `data` and `split` where given). Returns (url or None, why); several that fit are an error
    asking for --labels, never a guess (the newest, say, changes when a store is touched)."""
    fs, path = get_fs(stores_dir)
    fitting, what = [], "" if data is None else f" of {data}" + (f" split {split}" if split else "")
    for entry in sorted(fs.ls(path, detail=True) if fs.exists(path) else [], key=lambda e: e["name"]):
        if entry.get("type") != "directory" or not fs.exists(join(entry["name"], schema.INDEX_FILE)):
            continue
        try:
            found = LabelStore(entry["name"])
        except W2SError:
            continue  # a damaged store is not a candidate; `verify` says what is wrong with it
        if found.features:
            continue  # a feature store holds no weak labels
        attrs = found.attrs["data"]
        if (data is None or attrs["name"] == data) and (split is None or attrs["split"] == split):
            fitting.append(entry["name"])
    if not fitting:
        return None, f"no complete label store{what} in {stores_dir}"
    if len(fitting) > 1:
        names = ", ".join(p.rstrip("/").rsplit("/", 1)[-1] for p in fitting)
        raise W2SError(f"{len(fitting)} complete label stores{what} in {stores_dir} ({names}): choose one with --labels "
                       "PATH" + ("" if data else ", or narrow with --data"))
    return fitting[0], f"the only complete label store{what} in {stores_dir}"

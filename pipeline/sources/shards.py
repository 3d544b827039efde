"""WebDataset shards: expand patterns, count samples, fingerprint, read and write tar shards.

A shard's samples are grouped exactly as webdataset groups them (files sharing a key prefix), so
a count made here equals the number of samples a WebDataset pipeline yields.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Iterable, Iterator

import braceexpand
from webdataset import TarWriter
from webdataset.tariterators import base_plus_ext, group_by_keys

from ...errors import W2SError
from ...storage.fsutil import atomic_write, get_fs, is_local

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "w2s-pipe-shards/1"
_META = ("__", "__")
_DIGEST_SPAN = 1 << 16


@dataclass(frozen=True)
class Shard:
    url: str
    name: str  # the file name; unique within a data source
    count: int  # samples
    bytes: int
    digest: str = ""  # quick_digest: size plus the first and last 64 KiB
    error: str = ""  # why the shard cannot be read (only with tolerate=True in describe_shards)


def quick_digest(fs, path: str, size: int) -> str:
    """A cheap content check: sha256 of the size and the file's first and last 64 KiB.

    Size alone is too weak: tar pads to 10 KiB records, so a rewritten small shard keeps its size.
    """
    h = hashlib.sha256(str(size).encode())
    with fs.open(path, "rb") as f:
        h.update(f.read(_DIGEST_SPAN))
        if size > _DIGEST_SPAN:
            f.seek(max(_DIGEST_SPAN, size - _DIGEST_SPAN))
            h.update(f.read(_DIGEST_SPAN))
    return h.hexdigest()[:32]


def expand_pattern(pattern: str, storage_options: dict | None = None, where: str = "") -> list[str]:
    """Shard URLs for a brace pattern (`a-{000..009}.tar`), a glob (`a-*.tar`) or a comma list.

    Every shard a brace pattern names must exist; an error says where they were looked for.
    """
    where = f"{where}: " if where else ""
    urls: list[str] = []
    for part in [p.strip() for p in pattern.split(",") if p.strip()]:
        for candidate in braceexpand.braceexpand(part):
            if any(c in candidate for c in "*?["):
                fs, path = get_fs(candidate, storage_options)
                matches = sorted(fs.glob(path))
                urls.extend(_unstrip(candidate, fs, m) for m in matches)
            else:
                urls.append(candidate)
    if not urls:
        raise W2SError(f"{where}no shards match {pattern}")
    missing = _missing(urls, storage_options)
    if missing:
        raise W2SError(
            f"{where}{len(missing)} of {len(urls)} shards not found, first {missing[0]} (looked for {pattern})"
        )
    names = [url_name(u) for u in urls]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise W2SError(f"{where}two shards share the file name {dup!r}; shard names must be unique")
    return urls


def _unstrip(template: str, fs, path: str) -> str:
    """fsspec's glob returns protocol-less paths; put the protocol back for remote URLs."""
    if "://" in template and not is_local(fs):
        return f"{template.split('://', 1)[0]}://{path}"
    return path


def _missing(urls: list[str], storage_options: dict | None) -> list[str]:
    by_dir: dict[str, list[str]] = {}
    for u in urls:
        by_dir.setdefault(u.rsplit("/", 1)[0] if "/" in u else ".", []).append(u)
    missing = []
    for directory, members in by_dir.items():
        fs, dpath = get_fs(directory, storage_options)
        try:
            present = {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(dpath, detail=False)}
        except (FileNotFoundError, NotADirectoryError):
            present = set()
        missing.extend(u for u in members if url_name(u) not in present)
    return missing


def url_name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def check_member(info: tarfile.TarInfo, url: str) -> bool:
    """Whether a shard's tar member is a sample's file (a regular file; directories and tar's own
    metadata are skipped). A member that is a link, or whose name is absolute or climbs out of its
    folder (`../x`), is refused in one line naming shard and member: a scraped shard can hold one,
    and a sample's key must never name a place outside it."""
    name = info.name
    if info.issym() or info.islnk():
        raise W2SError(f"shard {url}: member {name!r} is a link (to {info.linkname!r}); a shard holds plain files only")
    if name.startswith("/") or name.startswith("\\") or ".." in re.split(r"[/\\]", name):
        raise W2SError(f"shard {url}: member {name!r} names a path outside the shard (absolute or with ..); refused")
    return info.isreg()


SKIP_META = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta: tar's own metadata members


def _files(f, url: str) -> Iterator[dict]:
    """A shard's files as webdataset's tar_file_iterator gives them ({fname, data}), each member checked."""
    with tarfile.open(fileobj=f, mode="r|*") as stream:
        for info in stream:
            if not check_member(info, url) or SKIP_META.match(info.name):
                continue
            yield {"fname": info.name, "data": stream.extractfile(info).read(), "__url__": url}
            stream.members = []


def list_keys(url: str, storage_options: dict | None = None) -> list[str]:
    """The keys of a shard's samples in order, from its tar headers (the data is skipped by seeking).

    Python's tarfile stops silently at a truncated header, which would make a truncated shard
    look short but valid; so the archive must end with its zero end-of-archive block.
    """
    fs, path = get_fs(url, storage_options)
    keys: list[str] = []
    try:
        with fs.open(path, "rb") as f:
            with tarfile.open(fileobj=f, mode="r:*") as tar:
                for info in tar:
                    name = info.name
                    if not check_member(info, url) or ("/" not in name and name.startswith(_META[0])
                                                       and name.endswith(_META[1])):
                        continue
                    prefix, _ = base_plus_ext(name)
                    if prefix is not None and (not keys or prefix != keys[-1]):
                        keys.append(prefix)
                end = tar.offset
                tar.fileobj.seek(end)
                block = tar.fileobj.read(tarfile.BLOCKSIZE)
            if len(block) < tarfile.BLOCKSIZE or any(block):
                raise tarfile.ReadError(f"truncated or corrupt after byte {end}, no end-of-archive block")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise W2SError(f"shard {url}: cannot read it as a tar file ({exc})") from None
    return keys


def shard_labels(url: str, label_field: str, storage_options: dict | None = None) -> dict[str, int | None]:
    """{key: its ground-truth class} of a shard, reading only the label members (a few bytes each)
    and seeking past the images; None for a label that is not an integer."""
    fs, path = get_fs(url, storage_options)
    labels: dict[str, int | None] = {}
    try:
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:*") as tar:
            for info in tar:
                prefix, ext = base_plus_ext(info.name)
                if check_member(info, url) and prefix is not None and ext == label_field:
                    text = tar.extractfile(info).read().decode(errors="replace").strip()
                    labels[prefix] = int(text) if text.lstrip("-").isdigit() else None
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise W2SError(f"shard {url}: cannot read it as a tar file ({exc})") from None
    return labels


def count_samples(url: str, storage_options: dict | None = None) -> int:
    """Samples in one shard, as webdataset groups them."""
    return len(list_keys(url, storage_options))


def read_manifest(directory: str, storage_options: dict | None = None) -> dict | None:
    """The manifest.json beside a set of shards (format, num_classes, class_names, splits), if any."""
    fs, path = get_fs(directory, storage_options)
    mpath = f"{path.rstrip('/')}/{MANIFEST}"
    if not fs.exists(mpath):
        return None
    try:
        manifest = json.loads(fs.cat_file(mpath))
        if not isinstance(manifest.get("splits"), dict):
            raise ValueError("no 'splits' table")
        return manifest
    except (ValueError, AttributeError) as exc:
        raise W2SError(f"{directory}/{MANIFEST}: not a w2s-pipe shard manifest ({exc})") from None


def load_manifest(directory: str, storage_options: dict | None = None) -> dict[str, dict]:
    """name -> {count, bytes, digest} from a manifest.json beside the shards, or {} if there is none."""
    manifest = read_manifest(directory, storage_options) or {"splits": {}}
    try:
        return {s["name"]: s for split in manifest["splits"].values() for s in split}
    except (KeyError, TypeError) as exc:
        raise W2SError(f"{directory}/{MANIFEST}: malformed shard entry ({exc})") from None


def describe_shards(urls: list[str], storage_options: dict | None = None, threads: int = 16,
                    tolerate: bool = False) -> list[Shard]:
    """Name, size and sample count of each shard.

    Counts come from a manifest.json beside the shards when the file still matches its size and
    digest; otherwise the tar headers are read (in parallel threads: it is I/O bound).
    """
    def directory(url: str) -> str:
        return url.rsplit("/", 1)[0] if "/" in url else "."

    manifests = {d: load_manifest(d, storage_options) for d in {directory(u) for u in urls}}

    def one(url: str) -> Shard:
        fs, path = get_fs(url, storage_options)
        size = int(fs.info(path)["size"])
        digest = quick_digest(fs, path, size)
        entry = manifests[directory(url)].get(url_name(url))
        trusted = entry and int(entry.get("bytes", -1)) == size and entry.get("digest") == digest
        try:
            count = int(entry["count"]) if trusted else count_samples(url, storage_options)
        except W2SError as exc:
            if not tolerate:
                raise
            return Shard(url=url, name=url_name(url), count=0, bytes=size, digest=digest, error=str(exc).split(": ", 1)[-1])
        return Shard(url=url, name=url_name(url), count=count, bytes=size, digest=digest)
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(urls)))) as pool:
        return list(pool.map(one, urls))


def changed_shards(recorded: list[dict], storage_options: dict | None = None, threads: int = 16) -> list[str]:
    """'shard NAME: why' for each recorded shard ({url, name, bytes, digest}) that is gone or whose
    size or quick digest differs now; at most 128 KiB read per shard."""
    def one(shard: dict) -> str | None:
        try:
            fs, path = get_fs(shard["url"], storage_options)
            size = int(fs.info(path)["size"])
            if size != int(shard["bytes"]):
                return f"shard {shard['name']}: {shard['url']} changed since it was labelled ({size} bytes, {shard['bytes']} then)"
            if shard.get("digest") and quick_digest(fs, path, size) != shard["digest"]:
                return (f"shard {shard['name']}: {shard['url']} changed since it was labelled (same size, other first or "
                        "last 64 KiB)")
        except (FileNotFoundError, OSError) as exc:
            return f"shard {shard['name']}: cannot read {shard['url']} ({exc})"
        return None

    if not recorded:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(recorded)))) as pool:
        return [p for p in pool.map(one, recorded) if p]


def fingerprint(shards: Iterable[Shard]) -> str:
    """sha256 over the shards' names, sizes, digests and counts: changes when the data source does."""
    h = hashlib.sha256()
    for s in shards:
        h.update(f"{s.name}\t{s.bytes}\t{s.digest}\t{s.count}\n".encode())
    return h.hexdigest()


def iter_samples(url: str, storage_options: dict | None = None) -> Iterator[dict]:
    """The samples of one shard as webdataset dicts (`__key__`, `__url__`, one entry per field)."""
    fs, path = get_fs(url, storage_options)
    try:
        with fs.open(path, "rb") as f:
            yield from group_by_keys(_files(f, url))
    except (tarfile.TarError, EOFError) as exc:
        raise W2SError(f"shard {url}: broken tar file ({exc})") from None
    except ValueError as exc:
        raise W2SError(f"shard {url}: {exc.args[0] if exc.args else exc}") from None


def write_shard(path: str, samples: Iterable[dict]) -> Shard:
    """Write samples (dicts of `__key__` and field -> bytes) as one tar shard, atomically."""
    buf = io.BytesIO()
    count = 0
    # A fixed mtime makes the same samples give byte-identical shards.
    with TarWriter(buf, mtime=0) as sink:
        for sample in samples:
            sink.write(sample)
            count += 1
    data = buf.getvalue()
    fs, fpath = get_fs(path)
    atomic_write(fs, fpath, data)
    return Shard(url=path, name=url_name(path), count=count, bytes=len(data), digest=quick_digest(fs, fpath, len(data)))


def write_manifest(directory: str, splits: dict[str, list[Shard]], **extra) -> str:
    """Write (or update: other splits already listed are kept) the manifest of a shard directory."""
    old = read_manifest(directory) or {}
    listed = {**old.get("splits", {}),
              **{split: [{"name": s.name, "count": s.count, "bytes": s.bytes, "digest": s.digest} for s in shards] for split, shards in splits.items()}}
    manifest = {"format": MANIFEST_FORMAT, **extra, "splits": listed}
    path = os.path.join(directory, MANIFEST)
    fs, fpath = get_fs(path)
    atomic_write(fs, fpath, json.dumps(manifest, indent=1).encode())
    return path


def shards_as_dicts(shards: list[Shard]) -> list[dict]:
    return [asdict(s) for s in shards]

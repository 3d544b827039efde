"""Small fsspec helpers so that the store works the same on a local disk and on object storage."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import uuid

import fsspec

from ..errors import W2SError


def get_fs(url: str, storage_options: dict | None = None):
    """(filesystem, path) for a local path or an fsspec URL such as s3://bucket/store."""
    fs, path = fsspec.core.url_to_fs(str(url), **(storage_options or {}))
    return fs, path


def absolute(url: str) -> str:
    """Local paths made absolute (recorded paths must not depend on the directory a command ran in)."""
    return url if "://" in str(url) else os.path.abspath(url)


def is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def join(path: str, *parts: str) -> str:
    return "/".join([path.rstrip("/"), *parts])


def nearest_existing(path: str) -> str:
    """`path` made absolute, or its nearest existing folder above it (where a file there would go)."""
    place = os.path.abspath(path)
    while not os.path.exists(place) and os.path.dirname(place) != place:
        place = os.path.dirname(place)
    return place


def check_writable(path: str, what: str) -> None:
    """A one-line error, before any work, where `what` (e.g. "prepare: the output") would be written
    to `path` on a read-only mount or a folder this process may not write: the nearest existing
    folder at or above it is asked (a read-only file system refuses root too). URLs are left to the
    object store."""
    if "://" in str(path):
        return
    place = nearest_existing(path)
    folder = place if os.path.isdir(place) else os.path.dirname(place)
    if not os.access(folder, os.W_OK):
        readonly = hasattr(os, "statvfs") and os.statvfs(folder).f_flag & getattr(os, "ST_RDONLY", 1)
        why = "is on a read-only file system" if readonly else "is not writable by this process"
        raise W2SError(f"{what} {path}: {folder} {why}; choose a writable place")


DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def disk_full(path: str, what: str, need: int | None = None) -> W2SError:
    """The one line for a write that ran out of space: the path, what was being written, the bytes it
    needed where known and what is free there; nothing written in part is kept (the caller removed
    it), so the same command finishes once space is freed."""
    place = nearest_existing(path)
    free = shutil.disk_usage(place).free if os.path.exists(place) else None
    needs = f"{need:,} bytes needed, " if need else ""
    left = f"{free:,} free" if free is not None else "free space unknown"
    return W2SError(f"no space left on device writing {what} {path} ({needs}{left}); free space and run the same "
                    "command again: what was finished is kept, the part written is not")


def atomic_write(fs, path: str, data: bytes) -> None:
    """Write a whole file so that readers see either nothing or all of it.

    Local files go through a temporary name and os.replace; an object store's PUT is already
    all-or-nothing.
    """
    if is_local(fs):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            if os.path.exists(tmp):
                os.unlink(tmp)
            if exc.errno in DISK_FULL:
                raise disk_full(path, "the file", len(data)) from None
            raise
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


def write_whole(path: str, data: bytes | str) -> None:
    """`atomic_write` of a local path or URL: the one way this tool writes a whole small file (a
    marker, a config, a report, a plot, a table), so that a crash or a full disk never leaves half."""
    atomic_write(get_fs(path)[0], path, data.encode() if isinstance(data, str) else data)


def file_sha256(path: str) -> str:
    """A local file's sha256, read a MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

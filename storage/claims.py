"""Atomic per-shard claims, so that label processes started by hand on one store share its shards.

A claim is `claims/<shard>.json` created with O_CREAT|O_EXCL (atomic on a local or network file
system) holding the owner's host and pid. A claim whose process is gone (same host) is stale and
is taken over. A claim from another host is a lease: its holder renews it (the file's mtime) while
it labels, and one not renewed for LEASE_S is taken over, so a process that died on another host
holds its shard for LEASE_S at most. Object stores have
no exclusive create here, so claims always succeed there: run one labelling job per store (any
number of torchrun ranks, which split the shards among themselves).
"""

from __future__ import annotations

import json
import os
import socket
import time

from . import schema
from .fsutil import get_fs, is_local, join

FRESH_S = 30.0  # an unreadable claim younger than this is being written, not abandoned
LEASE_S = 600.0  # a claim from another host not renewed for this long is abandoned
RENEW_S = 30.0  # how often a labeller renews its claims


class ShardClaims:
    def __init__(self, url: str, owner_pid: int, storage_options: dict | None = None):
        fs, path = get_fs(url, storage_options)
        self.enabled = is_local(fs)
        self.dir = join(path, schema.CLAIMS_DIR)
        self.done_dir = join(path, schema.DONE_DIR)
        self.owner_pid = owner_pid
        self.host = socket.gethostname()
        self.renewed = time.time()

    def _path(self, index: int) -> str:
        return schema.shard_file(self.dir, index, ".json")

    def claim(self, index: int) -> bool:
        """True if this owner now holds shard `index` and it still needs labelling.

        A shard finished by another process since this one listed its work is not taken: the
        marker is written before a claim is released, so checking it after claiming is race-free.
        """
        if not self.enabled:
            return True
        if not self._claim(index):
            return False
        if os.path.exists(schema.shard_file(self.done_dir, index, ".json")):
            self.release(index)
            return False
        return True

    def _claim(self, index: int) -> bool:
        if not self.enabled:
            return True
        os.makedirs(self.dir, exist_ok=True)
        path = self._path(index)
        for _ in range(3):
            if not create_exclusive(path, {"host": self.host, "pid": self.owner_pid, "time": time.time()}):
                holder = read_holder(path)
                if holder is not None and holder.get("host") == self.host and holder.get("pid") == self.owner_pid:
                    return True
                if not self._stale(path, holder):
                    return False
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                continue
            return True
        return False

    def _stale(self, path: str, holder: dict | None) -> bool:
        try:
            age = time.time() - os.path.getmtime(path)
        except FileNotFoundError:
            return True
        if holder is None:
            return age > FRESH_S
        if holder.get("host") == self.host:
            return not pid_alive(holder.get("pid"))
        return age > LEASE_S

    def renew(self, force: bool = False) -> None:
        """Renew this owner's claims (at most every RENEW_S unless `force`): the lease other hosts see."""
        if not self.enabled or (not force and time.time() - self.renewed < RENEW_S) or not os.path.isdir(self.dir):
            return
        self.renewed = time.time()
        for name in os.listdir(self.dir):
            path = os.path.join(self.dir, name)
            holder = read_holder(path)
            if holder is not None and holder.get("host") == self.host and holder.get("pid") == self.owner_pid:
                try:
                    os.utime(path)
                except FileNotFoundError:
                    pass

    def release(self, index: int) -> None:
        if self.enabled:
            try:
                os.unlink(self._path(index))
            except FileNotFoundError:
                pass

    def held_by_others(self, done: set[int]) -> list[dict]:
        """Live claims of other processes on shards not yet done."""
        if not self.enabled or not os.path.isdir(self.dir):
            return []
        out = []
        for name in sorted(os.listdir(self.dir)):
            stem = name[:-5]
            if not name.endswith(".json") or not stem.isdigit() or int(stem) in done:
                continue
            path = os.path.join(self.dir, name)
            holder = read_holder(path)
            if holder is not None and holder.get("pid") != self.owner_pid and not self._stale(path, holder):
                out.append({"shard": int(stem), **holder})
        return out


def take(path: str, me: dict) -> dict | None:
    """Hold the claim file `path` for `me` ({"host", "pid", ...}): None once held (created, or this
    process's own already), else the holder that keeps it: a live process on this host, or any on
    another (not checkable from here). A claim whose process is gone, or that cannot be read (a
    writer killed mid-way: create_exclusive makes that rare), is taken over."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    for _ in range(3):
        if create_exclusive(path, me):
            return None
        holder = read_holder(path) or {}
        if (holder.get("host"), holder.get("pid")) == (me["host"], me["pid"]):
            return None
        if holder.get("host") not in (None, me["host"]) or (holder.get("pid") is not None and pid_alive(holder["pid"])):
            return holder
        try:  # its process is gone (or the file unreadable): take it over
            os.unlink(path)
        except FileNotFoundError:
            pass
    return read_holder(path) or {"pid": None}


def create_exclusive(path: str, content: dict) -> bool:
    """Create `path` holding `content`, or return False if it exists: written to a private file,
    then hard-linked into place (atomic, and fails if the name exists), so that no reader ever
    sees the file empty. With O_EXCL and then a write, a process killed between the two left an
    empty claim, respected as "being written" for FRESH_S, which a re-run right after a kill met."""
    tmp = f"{path}.{socket.gethostname()}.{os.getpid()}.{time.monotonic_ns()}.tmp"
    with open(tmp, "w") as f:
        json.dump(content, f)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def read_holder(path: str) -> dict | None:
    """The holder ({"host", "pid", ...}) a claim or lock file names, or None if it cannot be read."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def pid_alive(pid) -> bool:
    """Whether process `pid` lives on this machine."""
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, TypeError, ValueError):
        return False
    except PermissionError:  # someone else's live process
        return True
    return True

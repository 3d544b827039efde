"""Shards written from a plan, side by side and resumably (`prepare folder --workers N`).

The plan is every shard's samples, fixed before anything is written: shard `name` holds files
(path, label, key, ...) in that order. A shard is written whole or not at all (a temporary name,
then a rename), by any of N processes; a killed prepare leaves finished shards and temporary files.
Run again with the same plan, it finds the finished shards, writes only the missing ones and never
rewrites a finished one; with a finished manifest, it says so and writes nothing. Each split's
plan fingerprint, kept beside the shards (`.prepare.json`), makes a different plan for a split
(other files, classes, seed, shard size or noise) in the same directory an error rather than a
mixture.

Processes are started with `forkserver`, never forked from this (possibly threaded) process.
"""

from __future__ import annotations

import concurrent.futures
import glob
import hashlib
import json
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ...errors import W2SError
from ...storage.fsutil import atomic_write, get_fs
from .shards import Shard, quick_digest, write_shard

PLAN_FILE = ".prepare.json"


@dataclass(frozen=True)
class PlannedShard:
    split: str
    name: str  # the file name
    samples: tuple  # ((file relative to the root, its image field, the other fields), ...) in the shard's order

    def write(self, out: str, root: str) -> Shard:
        return write_shard(os.path.join(out, self.name),
                           ({**fields, field: Path(root, path).read_bytes()} for path, field, fields in self.samples))


def stamps(plan: list[PlannedShard], extra: dict) -> dict[str, str]:
    """{split: the fingerprint of its planned shards and `extra` (classes, seed, noise, ...)}."""
    out = {}
    for split in dict.fromkeys(s.split for s in plan):
        shards = [[s.name, s.samples] for s in plan if s.split == split]
        text = json.dumps({"shards": shards, **extra}, sort_keys=True, default=str)
        out[split] = hashlib.sha256(text.encode()).hexdigest()[:24]
    return out


def _write_one(shard: PlannedShard, out: str, root: str) -> Shard:
    return shard.write(out, root)


def finished(out: str, plan: list[PlannedShard]) -> set[str]:
    """The plan's shards already in `out` (written whole: a shard only gets its name when complete)."""
    return {s.name for s in plan if os.path.exists(os.path.join(out, s.name))}


def recorded(out: str) -> dict[str, str]:
    path = os.path.join(out, PLAN_FILE)
    return json.load(open(path)) if os.path.exists(path) else {}


def check_plan(out: str, plan: list[PlannedShard], split_stamps: dict[str, str]) -> None:
    """`out` holds nothing of another plan for these splits: a split recorded with another
    fingerprint, or a planned shard's name taken by a file no resumable prepare wrote, is one line
    naming the directory and the split."""
    known = recorded(out)
    for split, stamp in split_stamps.items():
        if split in known and known[split] != stamp:
            raise W2SError(f"prepare: {out} holds split {split!r} of another prepare (other files, classes, seed, shard "
                           f"size or noise: plan {known[split]} against {stamp}); give another --out, or empty it")
        if split not in known and any(s.split == split for s in plan if os.path.exists(os.path.join(out, s.name))):
            raise W2SError(f"prepare: {out} already holds shards of split {split!r} that no resumable prepare wrote; "
                           "give another --out, or empty it")


def write_planned(plan: list[PlannedShard], out: str, root: str, *, workers: int = 1,
                  progress: bool = True, split_stamps: dict | None = None) -> tuple[dict[str, list[Shard]], int]:
    """Write the plan's missing shards into `out` with `workers` processes (1: this one), a progress
    bar counting files; returns ({split: its shards in plan order}, how many shards were written now)."""
    os.makedirs(out, exist_ok=True)
    for leftover in glob.glob(os.path.join(out, "*.tar.tmp-*")):  # a killed writer's partial file
        os.remove(leftover)
    atomic_write_json(os.path.join(out, PLAN_FILE), {**recorded(out), **(split_stamps or {})})
    done = finished(out, plan)
    todo = [s for s in plan if s.name not in done]
    total = sum(len(s.samples) for s in plan)
    bar = tqdm(total=total, initial=total - sum(len(s.samples) for s in todo), unit="file", disable=not progress,
               desc=f"prepare {os.path.basename(out.rstrip('/'))}", dynamic_ncols=True)
    written: dict[str, Shard] = {}
    try:
        if workers <= 1 or len(todo) <= 1:
            for shard in todo:
                written[shard.name] = _write_one(shard, out, root)
                bar.update(written[shard.name].count)
        else:
            context = multiprocessing.get_context("forkserver")
            with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                futures = [pool.submit(_write_one, shard, out, root) for shard in todo]
                for future in concurrent.futures.as_completed(futures):
                    made = future.result()
                    written[made.name] = made
                    bar.update(made.count)
    finally:
        bar.close()
    return described(out, plan, written), len(todo)


def described(out: str, plan: list[PlannedShard], written: dict[str, Shard] | None = None) -> dict[str, list[Shard]]:
    """{split: its shards in plan order}: those just `written` as their writer described them, the
    others (finished before) from their files."""
    splits: dict[str, list[Shard]] = {}
    for shard in plan:
        made = (written or {}).get(shard.name)
        if made is None:
            path = os.path.join(out, shard.name)
            size = os.path.getsize(path)
            made = Shard(url=path, name=shard.name, count=len(shard.samples), bytes=size,
                         digest=quick_digest(*get_fs(path), size))
        splits.setdefault(shard.split, []).append(made)
    return splits


def atomic_write_json(path: str, value) -> None:
    atomic_write(*get_fs(path), json.dumps(value).encode())

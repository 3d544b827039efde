"""A training run's directory: opening or finding it, its config.json and metrics log, the epoch's
running totals, and a digest of its weights.

    <workspace>/runs/<run>/config.json      every resolved setting, written when the run starts
                           metrics.jsonl    one JSON object per logging step, epoch and the end
                           tensorboard/     the same numbers as TensorBoard events
                           last.pt best.pt ema.pt   (checkpoint.Checkpoints)
                           owner.json       the process training it (RunClaim), while it trains
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import socket
import time

import torch
import torch.distributed as dist

from ...errors import W2SError
from ...storage.claims import take
from ...storage.fsutil import DISK_FULL, atomic_write, check_writable, disk_full, get_fs, write_whole
from ..runtime.workspace import workspace_dir

CONFIG_FILE = "config.json"


def run_path(name: str, workspace=None) -> str:
    """A run name is a directory under <workspace>/runs; a name with a path separator is a path."""
    return name if os.path.sep in name else str(workspace_dir(workspace) / "runs" / name)


OWNER_FILE = "owner.json"


def open_run(name: str, workspace=None, *, resume: bool = False, claim: "RunClaim | None" = None) -> str:
    """The directory of run `name` for `train`: held by no other live process (`claim` takes it for
    this one), a new run must not exist yet, a resumed one must have its last.pt."""
    path = run_path(name, workspace)
    check_writable(path, "train: the run")
    if claim is not None:
        claim.hold(path)
    try:
        if resume and not os.path.exists(os.path.join(path, "last.pt")):
            raise W2SError(f"--resume: run {path} has no last.pt to continue from", option="--resume")
        if not resume and os.path.exists(os.path.join(path, CONFIG_FILE)):
            if not os.path.exists(os.path.join(path, "last.pt")):  # it ended (a full disk, a kill) before
                _start_over(path)  # its first checkpoint, and nothing holds it: the same command starts it again
            else:
                raise W2SError(f"run {path} exists; pass --resume to continue it, or choose another --run-name")
    except W2SError:
        if claim is not None:
            claim.release()
        raise
    return path


def _start_over(path: str) -> None:
    """A run that never wrote a checkpoint, emptied of what it logged, to be trained from its start."""
    for name in (CONFIG_FILE, "metrics.jsonl"):
        if os.path.exists(os.path.join(path, name)):
            os.unlink(os.path.join(path, name))
    shutil.rmtree(os.path.join(path, "tensorboard"), ignore_errors=True)


class RunClaim:
    """This process's hold on the run it trains: <run>/owner.json (host, pid, start) created
    atomically (storage/claims.py's exclusive create), released when the block ends, however it
    ends. A second `train` of a run a live process holds is refused, naming it; a holder that is
    gone (same host) is taken over, so a killed run resumes as before. A holder on another host
    cannot be checked from here: it is refused too, and the message says which file to delete."""

    def __init__(self):
        self.path = None

    def __enter__(self) -> "RunClaim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def hold(self, run_dir: str) -> None:
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        owner = os.path.join(run_dir, OWNER_FILE)
        os.makedirs(run_dir, exist_ok=True)
        holder = take(owner, me)
        if holder is None:
            self.path = owner
            return
        if holder.get("host") not in (None, me["host"]):
            raise W2SError(f"run {run_dir} is held by process {holder.get('pid')} on {holder['host']} (since "
                           f"{holder.get('since')}); if it is gone, delete {owner}, else choose another --run-name")
        raise W2SError(f"run {run_dir} is being trained by process {holder.get('pid')} (since {holder.get('since')}); "
                       "wait for it to end, or choose another --run-name")

    def release(self) -> None:
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self.path = None


def find_run(run: str, workspace=None) -> str:
    path = run if os.path.sep in run or os.path.isdir(run) else str(workspace_dir(workspace) / "runs" / run)
    if not os.path.isdir(path):
        raise W2SError(f"no run {run!r} (looked for {path})")
    return path


def write_config(run_dir: str, config: dict) -> None:
    """config.json, whole or not at all (a full disk is one line)."""
    path = os.path.join(run_dir, CONFIG_FILE)
    atomic_write(get_fs(path)[0], path, json.dumps(config, indent=1).encode())


def read_config(run_dir: str) -> dict:
    """A run's config.json, or a one-line error naming it."""
    path = os.path.join(run_dir, CONFIG_FILE)
    try:
        with open(path) as f:
            config = json.load(f)
    except FileNotFoundError:
        raise W2SError(f"run {run_dir} has no {CONFIG_FILE}: not a run directory of `w2s-pipe train`") from None
    except (OSError, ValueError) as exc:
        raise W2SError(f"{path} is damaged ({exc}); the run's checkpoints are still usable with --checkpoint") from None
    if not isinstance(config, dict):
        raise W2SError(f"{path} is damaged (not a mapping); the run's checkpoints are still usable with --checkpoint")
    return config



def read_metrics(run_dir, kind: str | None = None) -> list[dict]:
    """The records of a run's metrics.jsonl (MetricsLog's), in order, those of `kind` ("step",
    "epoch", "end") where given; a line cut by a crash ends them, as it does on resume. No file: []."""
    path = os.path.join(run_dir, "metrics.jsonl")
    records = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except ValueError:
                    break
    return [r for r in records if kind is None or r.get("kind") == kind]


class MetricsLog:
    """metrics.jsonl: one JSON object per line, each written with one append, so a crash can cut
    at most the last line, which `truncate_after` drops on resume with any later records.

    Every number of a record also goes to TensorBoard event files in `<run>/tensorboard` (the
    `tensorboard` package's writer, through torch), as "<kind>/<name>" at the record's step; a
    resumed run's writer drops the events after the step it resumes from (a crash may leave some)."""

    def __init__(self, path: str, enabled: bool):
        self.path, self.enabled = path, enabled
        self.board = None

    def open_board(self, resume_step: int = 0) -> None:
        """From a run resumed at step s, TensorBoard drops events after s, as `truncate_after` does."""
        if self.enabled:
            # lazy: tensorboard takes a second to import, and the main rank alone writes
            from torch.utils.tensorboard import SummaryWriter

            self.board = SummaryWriter(os.path.join(os.path.dirname(self.path), "tensorboard"),
                                       purge_step=resume_step + 1 if resume_step else None)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        line = (json.dumps(record) + "\n").encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                if os.write(fd, line) < len(line):  # a short write: the disk filled under it
                    raise OSError(errno.ENOSPC, "short write")
            finally:
                os.close(fd)
        except OSError as exc:  # a cut last line is dropped on resume (truncate_after)
            if exc.errno in DISK_FULL:
                raise disk_full(self.path, "the metrics log", len(line)) from None
            raise
        if self.board is not None:
            try:
                for name, value in record.items():
                    if name not in ("kind", "step") and isinstance(value, (int, float)) and not isinstance(value, bool):
                        self.board.add_scalar(f"{record.get('kind', 'record')}/{name}", value, record.get("step", 0))
                self.board.flush()
            except OSError as exc:
                if exc.errno in DISK_FULL:
                    raise disk_full(os.path.join(os.path.dirname(self.path), "tensorboard"), "TensorBoard's events") from None
                raise

    def close(self) -> None:
        if self.board is not None:
            self.board.close()
            self.board = None

    def truncate_after(self, step: int) -> None:
        if not self.enabled or not os.path.exists(self.path):
            return
        kept = []
        with open(self.path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    break  # a line cut by a crash, and nothing after it counts
                if record.get("step", 0) <= step:
                    kept.append(line if line.endswith("\n") else line + "\n")
        write_whole(self.path, "".join(kept))


class EpochTotals:
    """What the epoch's record sums over its logging windows (agreement with the weak labels,
    samples --skip-missing left out) and what the end record sums over the run. Saved in every
    rank's part of last.pt (`as_dict`), so a resumed epoch's record counts the steps before the stop."""

    FIELDS = ("agree", "agree_steps", "dropped", "dropped_total")

    def __init__(self, saved: dict | None = None):
        saved = saved or {}
        self.agree, self.agree_steps = float(saved.get("agree", 0.0)), int(saved.get("agree_steps", 0))
        self.dropped, self.dropped_total = int(saved.get("dropped", 0)), int(saved.get("dropped_total", 0))

    def add(self, flushed: dict) -> None:
        """A `MetricWindow.flush`'s figures."""
        self.agree += flushed["sums"].get("agree", 0.0)
        self.agree_steps += flushed["steps"]
        self.dropped += flushed["dropped"]
        self.dropped_total += flushed["dropped"]

    def epoch_figures(self, skip_missing: bool) -> dict:
        """The epoch record's share: mean agreement with the weak labels (and what was dropped)."""
        out = {"train_agree": self.agree / max(1, self.agree_steps)}
        return {**out, "dropped_missing": self.dropped} if skip_missing else out

    def next_epoch(self) -> None:
        self.agree, self.agree_steps, self.dropped = 0.0, 0, 0

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.FIELDS}


class MetricWindow:
    """The metrics of the steps since the last record, kept where they are computed (on the GPU, no
    wait per step): one small vector per step. `flush` copies them to the host once, after one
    all-reduce under DDP (so a record is the mean over ranks, and every rank sees a non-finite loss
    at the same step), and raises with the first step whose loss was not finite."""

    def __init__(self):
        self._reset()

    def _reset(self) -> None:
        self.names, self.rows, self.dropped = None, [], 0
        self.first_step, self.images, self.started = None, 0, time.perf_counter()

    def add(self, step: int, parts: dict, images: int, dropped: int = 0) -> None:
        if self.names is None:
            self.names, self.first_step = list(parts), step  # the objective ("loss") first
        self.rows.append(torch.stack([v.detach().float().reshape(()) for v in parts.values()]))
        self.images += images
        self.dropped += dropped

    @property
    def steps(self) -> int:
        return len(self.rows)

    def flush(self, world_size: int = 1) -> dict:
        """{"means": {name: mean over steps (and ranks)}, "sums", "steps", "images", "seconds", "dropped"}."""
        stacked = torch.stack(self.rows)  # (steps, parts)
        packed = torch.cat([stacked.flatten(), stacked.new_tensor([float(self.dropped)])])
        if world_size > 1:
            dist.all_reduce(packed)
        host = packed.tolist()  # the one host copy
        n, k = stacked.shape
        rows = [[v / world_size for v in host[i * k: (i + 1) * k]] for i in range(n)]
        for i, row in enumerate(rows):
            if not math.isfinite(row[0]):
                raise NonFiniteLoss(self.first_step + i, row[0], dict(zip(self.names[1:], row[1:])))
        sums = {name: sum(row[j] for row in rows) for j, name in enumerate(self.names)}
        out = {"means": {name: v / n for name, v in sums.items()}, "sums": sums, "steps": n, "images": self.images,
               "seconds": time.perf_counter() - self.started, "dropped": int(round(host[-1]))}
        self._reset()
        return out


class NonFiniteLoss(Exception):
    """A step's loss was not finite; the message names the step and that step's other parts (which
    of the loss's terms went first)."""

    def __init__(self, step: int, value: float, parts: dict | None = None):
        said = ", ".join(f"{name} {v:.4g}" for name, v in (parts or {}).items())
        super().__init__(f"the loss is {value} at step {step}" + (f" ({said})" if said else ""))
        self.step, self.value, self.parts = step, value, parts or {}


def weights_digest(model) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]

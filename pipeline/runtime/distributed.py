"""torch.distributed under torchrun: rank and world from the environment, gloo on CPU, nccl on GPU.

`session` is how a stage runs: the device, deterministic kernels where asked, the process group
started and always shut down. The collectives a stage needs (`broadcast`, `all_gather`, `barrier`)
are no-ops in a single process.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
from dataclasses import dataclass

import timm.utils
import torch
import torch.distributed as dist

from ...errors import W2SError
from ..config.choices import PRECISIONS
from . import watchdog
from .watchdog import Watchdog, end_with


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def pick_device(requested: str, local_rank: int = 0):
    """`auto` is this rank's GPU when there is one, else the CPU."""
    if requested == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        check_gpu_count(local_rank, torch.cuda.device_count())
        return torch.device(f"cuda:{local_rank}")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise W2SError(f"--device {requested!r} is not a device; use auto, cpu, cuda or cuda:N",
                       option="--device") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise W2SError(f"--device {requested} asked for, but no CUDA GPU is available", option="--device")
        if device.index is None:
            check_gpu_count(local_rank, torch.cuda.device_count())
            device = torch.device(f"cuda:{local_rank}")
        elif device.index >= torch.cuda.device_count():
            raise W2SError(f"--device {requested}: this machine has {torch.cuda.device_count()} GPUs (cuda:0 .. "
                           f"cuda:{torch.cuda.device_count() - 1})", option="--device")
    return device


def check_gpu_count(local_rank: int, gpus: int) -> None:
    """One GPU per process: torchrun's local rank r takes cuda:r, so it needs more than r GPUs."""
    if local_rank >= gpus:
        raise W2SError(f"local rank {local_rank} has no GPU: this machine has {gpus} GPU{'s' if gpus != 1 else ''} "
                       f"and torchrun started more processes per node; use --nproc-per-node {gpus} "
                       "(one process per GPU), or --device cpu")


@contextlib.contextmanager
def deterministic_mode(enabled: bool):
    """Deterministic kernels only, while the block runs (`--deterministic`): the same run gives the
    same weights on a GPU too, at some cost in speed; an operation without a deterministic kernel
    then raises, naming itself. On the CPU the kernels this tool uses are deterministic already for
    a fixed thread count. The previous settings come back after the block."""
    if not enabled:
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
              torch.backends.cudnn.deterministic)
    # cuBLAS reads this when it starts: before the first GPU matrix product of the process.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[1], before[2]


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16, AMX, or Arm's BF16 extension).

    Measured on an AMD EPYC with AVX512-BF16: bf16 autocast ran resnet18 1.75x and ViT-S 1.93x
    faster than fp32. Without such units bf16 is emulated and slower, so fp32 is kept there.
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve_precision(precision: str, device) -> str:
    """`auto` is bf16 on GPUs and on CPUs with native bf16, else fp32."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" or cpu_has_bf16() else "fp32"
    return precision


def autocast_dtype(precision: str):
    return dict(zip(PRECISIONS, (torch.bfloat16, torch.float16, torch.float32)))[precision]


def autocast(precision: str, device):
    """The autocast context of a resolved `precision` on `device` (off for fp32)."""
    return torch.autocast(device_type=device.type, dtype=autocast_dtype(precision), enabled=precision != "fp32")


@contextlib.contextmanager
def session(requested_device: str = "auto", *, deterministic: bool = False, stall_timeout: float | None = None):
    """A stage's distributed session: yields (DistInfo, device). Picks this rank's device, turns on
    deterministic kernels for the block where asked (`--deterministic`), watches the stage
    (watchdog.py: a rank stuck for `stall_timeout` seconds, or told to stop, ends with one line
    saying where it was), starts the process group under torchrun with the same timeout for its
    collectives and shuts it down however the block ends. A rank whose torchrun is gone ends too.
    An operation that has no deterministic kernel, and a rank that lost another, are one-line errors."""
    info = dist_info()
    device = pick_device(requested_device, info.local_rank)
    if launched_by_torchrun():
        end_with(os.getppid())  # no orphan rank: it ends with its launcher, however that ended
    with deterministic_mode(deterministic), Watchdog(info.rank, info.world_size, stall_timeout) as dog:
        info = init_distributed(device, stall_timeout)
        try:
            yield info, device
        except BaseException as exc:
            dog.failing()
            if isinstance(exc, RuntimeError):
                _raise_as_w2s(exc, deterministic, device, info)
            raise
        finally:
            shutdown()


def _raise_as_w2s(exc: RuntimeError, deterministic: bool, device, info) -> None:
    """The one-line error of a kernel with no deterministic implementation or of a lost rank, or
    nothing (the caller re-raises `exc`)."""
    if deterministic and "does not have a deterministic implementation" in str(exc):
        op = str(exc).split(" does not have", 1)[0].strip()
        raise W2SError(f"--deterministic: {op} has no deterministic kernel on {device}, so this model cannot "
                       "train deterministically there; drop --deterministic (runs then differ slightly)",
                       option="--deterministic") from None
    if info.world_size > 1 and _lost_peer(exc):
        raise W2SError(f"{watchdog.describe()}: a collective with the other ranks failed, so one of them is "
                       f"gone or stuck ({_first_line(exc)}); look above for its own error; what was finished "
                       "is kept, continue with the same command (train: --resume)") from None


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


def _lost_peer(exc: RuntimeError) -> bool:
    """Whether a collective failed because another rank is gone or stuck (gloo names the broken
    connection or the timeout; torch raises its DistError family)."""
    text = str(exc)
    return isinstance(exc, getattr(dist, "DistError", ())) or any(
        s in text for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Timed out",
                            "timed out", "gloo", "NCCL"))


def _first_line(exc: BaseException) -> str:
    """The gist of a backend's error: its first sentence, without gloo's source location."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", lines[0] if lines else type(exc).__name__)
    return re.split(r"(?<=[a-z])\. ", text, maxsplit=1)[0][:300]


def init_distributed(device, stall_timeout: float | None = None) -> DistInfo:
    """The process group under torchrun; its collectives give up after `stall_timeout` seconds
    (torch's default, 30 minutes for gloo, where None or 0)."""
    info = dist_info()
    if info.world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        timeout = {"timeout": datetime.timedelta(seconds=stall_timeout)} if stall_timeout else {}
        dist.init_process_group(backend=backend, **timeout)
    return info


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def broadcast(value, src: int = 0):
    """Rank `src`'s `value` (any picklable object) on every rank."""
    if not _active():
        return value

    shared = [value]
    dist.broadcast_object_list(shared, src=src)
    return shared[0]


def on_main(fn):
    """`fn()` run by the main process alone, its result shared with every rank, or its one-line
    error raised on every rank: a decision made once. (Each rank checking for itself would race:
    another rank may already have acted on it, as a run's config.json written by rank 0 before
    rank 1 looked for it.)"""
    result, error = None, None
    if dist_info().is_main:
        try:
            result = fn()
        except W2SError as exc:
            error = str(exc)
    result, error = broadcast((result, error))
    if error:
        raise W2SError(error)
    return result


def all_gather(value) -> list:
    """Every rank's `value`, in rank order, on every rank (a collective: all ranks call it)."""
    if not _active():
        return [value]

    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def wrap_model(model, device, info: DistInfo, *, compile: bool = False):
    """The module a training step calls, and its `no_sync` (None outside DDP): DDP under torchrun
    (each rank's gradients averaged), then torch.compile where asked."""
    net, no_sync = model, None
    if info.world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        no_sync = net.no_sync
    if compile:
        net = torch.compile(net)
    return net, no_sync


def sync_norm_stats(modules, world_size: int) -> None:
    """DDP keeps parameters equal, but each rank's BatchNorm running statistics follow its own
    batches: average them over ranks so that every rank evaluates and saves the same model."""
    if world_size > 1:
        for module in modules:
            if module is not None:
                timm.utils.distribute_bn(module, world_size, reduce=True)


def barrier() -> None:
    if _active():
        dist.barrier()


def shutdown() -> None:
    if _active():
        dist.destroy_process_group()

"""Checkpoints this tool writes: the state dict plus what is needed to rebuild and feed the model.

Reading one is where a file a user names enters: anything that is not a checkpoint (a folder, an
empty or cut file, another program's pickle, a state dict of other shapes) is a one-line error
naming the file and saying what would work. `Checkpoints` writes a run's files by their rules.
"""

from __future__ import annotations

import os
import shutil
import uuid

import torch

from ...errors import W2SError
from ...storage.fsutil import (
    DISK_FULL,
    disk_full,
    file_sha256,  # noqa: F401  (re-exported: a checkpoint's identity)
)

FORMAT = "w2s-pipe-checkpoint/1"
# What a checkpoint from `train` holds besides the weights; one that lacks any is damaged.
TOOL_KEYS = ("model_name", "num_classes", "data_config", "state_dict")
# What `train --resume` reads from last.pt besides those.
RESUME_KEYS = ("optimizer", "step", "ranks", "settings")


def save_checkpoint(path: str, state_dict: dict, *, model_name: str, num_classes: int, data_config: dict,
                    class_names=None, **extra) -> None:
    """Write atomically (temporary file, then rename), so a crash never leaves half a checkpoint."""
    payload = {
        "format": FORMAT,
        "model_name": model_name,
        "num_classes": int(num_classes),
        "data_config": data_config,
        "class_names": list(class_names) if class_names else None,
        "state_dict": state_dict,
        **extra,
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        torch.save(payload, tmp)
    except (OSError, RuntimeError) as exc:  # torch's zip writer reports a full disk as a RuntimeError
        if os.path.exists(tmp):
            os.unlink(tmp)
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
        need = _tensor_bytes(payload)
        if getattr(exc, "errno", None) in DISK_FULL or need >= free:
            raise disk_full(path, "the checkpoint", need) from None
        raise
    os.replace(tmp, path)


def _tensor_bytes(payload) -> int:
    """The bytes of the tensors in a checkpoint's payload (its size, less a little metadata)."""
    if isinstance(payload, torch.Tensor):
        return payload.numel() * payload.element_size()
    if isinstance(payload, dict):
        return sum(_tensor_bytes(v) for v in payload.values())
    if isinstance(payload, (list, tuple)):
        return sum(_tensor_bytes(v) for v in payload)
    return 0


ADVICE = "give a .pt file from `w2s-pipe train` or a saved state_dict()"


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception's message (torch's run on for lines)."""
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return line.split(". ", 1)[0][:160]


def read_file(path: str, advice: str | None = None):
    """The object a checkpoint file holds (torch.load without running code, or a safetensors file),
    or a one-line error naming the file, what is wrong with it and what to do (`advice`, where the
    caller knows better than the advice for each kind of damage)."""
    def fail(what: str, default: str = ADVICE):
        raise W2SError(f"checkpoint {path} {what}; {advice or default}") from None

    if os.path.isdir(path):
        inside = [n for n in ("last.pt", "best.pt", "ema.pt") if os.path.isfile(os.path.join(path, n))]
        hint = f": give a file in it ({', '.join(inside)})" if inside else ""
        raise W2SError(f"checkpoint {path} is a directory{hint}")
    if not os.path.isfile(path):
        raise W2SError(f"checkpoint {path} does not exist")
    if os.path.getsize(path) == 0:
        fail("is an empty file (a copy or a save cut short?)")
    with open(path, "rb") as f:
        head = f.read(16)
    if path.endswith(".safetensors") or (len(head) >= 9 and head[8:9] == b"{"):
        try:
            from safetensors.torch import load_file

            return load_file(path, device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            fail(f"is not a readable safetensors file ({_first_line(exc)})")
    if head[:2] == b"\x1f\x8b":
        raise W2SError(f"checkpoint {path} is gzip-compressed; decompress it (gunzip) and give the file inside")
    if head[:4] != b"PK\x03\x04" and head[:1] != b"\x80":  # neither torch.save's zip nor a pickle
        fail(f"is not a PyTorch checkpoint (it begins {head[:8]!r})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for a file that is not its own
        if "Weights only load failed" in str(exc):
            fail("is a pickle that cannot be read without running its code (a whole pickled model, or not from "
                 "torch.save), which this tool never does", "save the model's state_dict() with torch.save and give "
                 "that file")
        fail(f"is cut short or damaged ({type(exc).__name__}: {_first_line(exc)})", "copy it again, or give another "
             "checkpoint")


def load_checkpoint(path: str) -> dict:
    """A checkpoint as {"format"?, "state_dict", ...}; a plain state dict (or timm's and DeiT's
    {"state_dict_ema" | "state_dict" | "model": ...} wrappers) is wrapped as {"state_dict": ...}."""
    obj = read_file(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        missing = [k for k in TOOL_KEYS if k not in obj]
        if not missing and not (isinstance(obj["data_config"], dict) and isinstance(obj["num_classes"], int)
                                and isinstance(obj["model_name"], str)):
            missing = ["a readable model name, class count and data config"]
        if missing or not _is_state_dict(obj.get("state_dict")):
            raise W2SError(f"checkpoint {path} is damaged: written by w2s-pipe but without "
                           f"{', '.join(missing) or 'a state dict of tensors'}")
        return obj
    if isinstance(obj, dict):
        for key in ("state_dict_ema", "state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not _is_state_dict(obj):
        raise W2SError(f"checkpoint {path}: expected a state dict of tensors, found {_describe(obj)}; {ADVICE}")
    prefixes = ("module.", "_orig_mod.")
    state = {}
    for k, v in obj.items():
        for p in prefixes:
            if k.startswith(p):
                k = k[len(p):]
        state[k] = v
    return {"state_dict": state}


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and hasattr(v, "shape") for k, v in obj.items())


def _describe(obj) -> str:
    if isinstance(obj, dict):
        return "an empty mapping" if not obj else f"a mapping with keys {', '.join(map(str, list(obj)[:4]))}"
    return f"a {type(obj).__name__}"


def load_run_checkpoint(path: str) -> dict:
    """A run's last.pt for `train --resume`: a checkpoint of this tool with its optimizer, step and
    every rank's state, or a one-line error saying how to go on."""
    ckpt = read_file(path, advice="the run cannot be continued from it: start a new run (--run-name)")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise W2SError(f"--resume: {path} is not a checkpoint `w2s-pipe train` wrote; the run cannot be continued: "
                       "start a new run (--run-name)", option="--resume")
    missing = [k for k in (*TOOL_KEYS, *RESUME_KEYS) if k not in ckpt]
    if missing:
        raise W2SError(f"--resume: {path} lacks {', '.join(missing)} (damaged, or not a run's last.pt); the run cannot "
                       "be continued exactly: start a new run (--run-name)", option="--resume")
    return ckpt


class Checkpoints:
    """A run's checkpoint files and their rules: last.pt after every epoch and at a stop (with the
    optimizer, every rank's state and the weight average, so that --resume continues exactly),
    best.pt at the best validation top-1 so far (the weights alone: nothing resumes from it, and the
    optimizer's state would double its size), ema.pt (the weight average alone, for `eval --pick ema`
    and `label`) beside each last.pt. Only the main rank writes."""

    def __init__(self, run_dir: str, enabled: bool, *, common: dict, ema_decay: float | None = None):
        self.last, self.best = os.path.join(run_dir, "last.pt"), os.path.join(run_dir, "best.pt")
        self.ema = os.path.join(run_dir, "ema.pt")
        self.enabled, self.common, self.ema_decay = enabled, common, ema_decay

    def save_best(self, model, *, step: int, epoch: int, best_top1) -> None:
        if self.enabled:
            save_checkpoint(self.best, model.state_dict(), step=step, epoch=epoch, best_top1=best_top1, **self.common)

    def save_last(self, model, *, step: int, epoch: int, best_top1, optimizer, ranks: list, scaler=None,
                  ema=None, members: dict | None = None) -> None:
        if not self.enabled:
            return
        meta = self._meta(step, epoch, best_top1, optimizer, scaler)
        save_checkpoint(self.last, model.state_dict(), ranks=ranks, members=members,
                        ema=ema.state_dict() if ema is not None else None, **meta)
        if ema is not None:
            save_checkpoint(self.ema, ema.state_dict(), averaged=self.ema_decay, step=step, epoch=epoch, **self.common)

    def _meta(self, step, epoch, best_top1, optimizer, scaler) -> dict:
        return dict(step=step, epoch=epoch, optimizer=optimizer.state_dict(),
                    scaler=scaler.state_dict() if scaler else None, best_top1=best_top1, **self.common)

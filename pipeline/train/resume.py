"""What makes `train --resume` a continuation: the settings a run may not change, and each rank's
own state (random generators, normalisation buffers, the epoch's running sums) saved with it.

A resumed run must end where the uninterrupted one would have: the weights, the optimizer, the
schedule (a function of the step), the samples and their views (a function of the step and the
seed, see loaders/train_stream.py) and every rank's generators. Any setting that would change the result
is compared with the one the run was started with, and a difference is refused by name.
"""

from __future__ import annotations

import random
from dataclasses import asdict

import numpy as np
import torch
import torch.distributed as dist

from ...errors import W2SError
from ..models.checkpoint import load_run_checkpoint

# TrainConfig fields that only steer this invocation, never what is computed.
INVOCATION_ONLY = frozenset({"resume", "max_steps", "progress", "log_every", "run", "workspace", "skip_shard_check",
                             "stall_timeout",
                             "config",  # the recipe's values are compared as the values they gave
                             # compared through what they resolve to (see train.py's settings):
                             "labels", "data", "split", "workers", "device", "precision", "decode", "teacher"})


def run_settings(cfg, **resolved) -> dict:
    """Everything that decides what a run computes: its config less the invocation-only fields,
    plus what the others resolved to on this machine (`resolved`: the model's full name, the
    precision, the decoder, ...). --resume refuses any difference by name."""
    return {**{k: v for k, v in asdict(cfg).items() if k not in INVOCATION_ONLY}, **resolved}


def differences(saved: dict, current: dict) -> list[str]:
    """'name (then X, now Y)' for every setting that differs; keys missing on one side count."""
    out = []
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            out.append(f"{key} (started with {saved.get(key)!r}, now {current.get(key)!r})")
    return out


def check_resumable(saved: dict | None, current: dict, run_dir: str) -> None:
    if saved is None:
        raise W2SError(f"--resume: run {run_dir} was written by an older w2s-pipe that did not record its settings; "
                       "it cannot be continued exactly: start a new run", option="--resume")
    diff = differences(saved, current)
    if diff:
        raise W2SError(f"--resume: run {run_dir} cannot continue with other settings: {'; '.join(diff)}. "
                       "Resume with the settings it was started with, or start a new run (--run-name)",
                       option="--resume")


def resume(path: str, settings: dict, run_dir: str, *, model, optimizer, scaler=None, ema=None, rank: int = 0,
           device=None, members=None) -> tuple[int, float | None, dict]:
    """Put a run back where its last.pt left it: weights, weight average (`ema`, the averaged
    module), optimizer, loss scaler, learned ensemble weights (`members`) and this rank's own state. Returns (step, best top-1 so far,
    the epoch's running sums). A last.pt that is not this run's, or was written with other
    settings, is a one-line error."""
    ckpt = load_run_checkpoint(path)
    check_resumable(ckpt.get("settings"), settings, run_dir)
    try:
        model.load_state_dict(ckpt["state_dict"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        sums = restore_rank_state(model, ckpt["ranks"][rank], device, ema)
        if members is not None:
            members.load_state_dict(ckpt["members"])
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise W2SError(f"--resume: {path} does not fit this run ({why}); it is damaged: start a new run "
                       "(--run-name)", option="--resume") from None
    return int(ckpt["step"]), ckpt.get("best_top1"), sums


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device) -> dict:
    """This process's generators, in types `torch.load(weights_only=True)` reads back."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss], "torch": torch.get_rng_state(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def rank_state(model, device, sums: dict, ema=None) -> dict:
    """This rank's part of a checkpoint: generators, buffers (each rank's BatchNorm statistics follow
    its own batches until the epoch's end averages them; so do the weight average's, `ema`) and the
    epoch's running sums."""
    state = {"rng": rng_state(device), "sums": dict(sums),
             "buffers": {name: b.detach().cpu().clone() for name, b in model.named_buffers()}}
    if ema is not None:
        state["ema_buffers"] = {name: b.detach().cpu().clone() for name, b in ema.named_buffers()}
    return state


def gather_rank_states(state: dict, world_size: int) -> list[dict]:
    """Every rank's state on every rank (a collective: all ranks call it)."""
    if world_size == 1:
        return [state]

    states = [None] * world_size
    dist.all_gather_object(states, state)
    return states


def restore_rank_state(model, state: dict, device, ema=None) -> dict:
    """Put a rank's saved state back; returns its epoch sums."""
    with torch.no_grad():
        for module, saved in ((model, state["buffers"]), (ema, state.get("ema_buffers", {}))):
            if module is None:
                continue
            buffers = dict(module.named_buffers())
            for name, value in saved.items():
                if name in buffers:
                    buffers[name].copy_(value)
    set_rng_state(state["rng"], device)
    return dict(state["sums"])

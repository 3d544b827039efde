"""Checkpoints this tool writes: the state dict plus what is needed to rebuild and feed the model."""

from __future__ import annotations

import hashlib
import os
import uuid

from ...errors import W2SError

FORMAT = "w2s-pipe-checkpoint/1"


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(path: str, state_dict: dict, *, model_name: str, num_classes: int, data_config: dict,
                    class_names=None, **extra) -> None:
    """Write atomically (temporary file, then rename), so a crash never leaves half a checkpoint."""
    import torch

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
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str) -> dict:
    """A checkpoint as {"format"?, "state_dict", ...}; a plain state dict is wrapped."""
    import torch

    if not os.path.isfile(path):
        raise W2SError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        why = (str(exc).strip().splitlines() or [""])[0]
        raise W2SError(f"checkpoint {path}: not a PyTorch checkpoint ({type(exc).__name__}"
                       + (f": {why}" if why else "") + ")") from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return obj
    if isinstance(obj, dict):
        for key in ("state_dict_ema", "state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(hasattr(v, "shape") for v in obj.values()):
        raise W2SError(f"checkpoint {path}: expected a state dict of tensors")
    prefixes = ("module.", "_orig_mod.")
    state = {}
    for k, v in obj.items():
        for p in prefixes:
            if k.startswith(p):
                k = k[len(p):]
        state[k] = v
    return {"state_dict": state}

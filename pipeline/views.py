"""Each training sample's augmented view is a function of (run seed, shard, key, pass), nothing else.

The seed of a view is a hash of those four values (a counter-based generator: no state carried from
one sample to the next), so a sample gets the same crop and flip whatever the number of ranks,
loading processes or the batch size, and a resumed run redraws exactly what the uninterrupted run
drew. `pass` counts the passes over the data (the stream's epochs), so a sample's view changes from
one pass to the next. Draws come only from the seeded generators, never from process state.
"""

from __future__ import annotations

import hashlib
import random


def view_seed(seed: int, shard: str, key: str, epoch: int) -> int:
    """A 63-bit seed for one sample's view in one pass."""
    text = f"{int(seed)}\0{shard}\0{key}\0{int(epoch)}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def seeded(fn, seed: int, *args):
    """fn(*args) with Python's, numpy's and torch's global CPU generators seeded with `seed`: timm's
    and torchvision's transforms draw from all three. In the main process (in-process loading) the
    generators are restored after, since the run's own draws (dropout, mixup) come from them; a
    loading process uses them for nothing else, and skips the save and restore (~80 us of the ~90)."""
    import numpy as np
    import torch
    from torch.utils.data import get_worker_info

    cpu = torch.default_generator  # torch.manual_seed would also seed every GPU: 100x slower
    saved = None if get_worker_info() is not None else (random.getstate(), np.random.get_state(), cpu.get_state())
    random.seed(seed)
    np.random.seed(seed % 2**32)
    cpu.manual_seed(seed)
    try:
        return fn(*args)
    finally:
        if saved is not None:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            cpu.set_state(saved[2])

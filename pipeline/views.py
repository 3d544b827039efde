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
    """fn(*args) with Python's, numpy's and torch's global generators seeded with `seed`, and
    restored after: timm's and torchvision's transforms draw from all three, and the caller's
    streams (a model's dropout, the in-process loader's shuffle) must not see these draws."""
    import numpy as np
    import torch

    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)
            return fn(*args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)

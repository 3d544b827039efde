"""Noisy ground truth for the paper's noisy-label scenario (`prepare ... --label-noise KIND:RATE`).

The rules are those of the official code (after Sel-CL), drawn from a numpy Generator seeded with
`--noise-seed` (42 there), so the same seed gives the same noisy labels on any machine (the same
rules as the official code, not its draws: it used numpy's legacy global generator):

- symmetric:R: exactly int(R·N) of the N training samples, chosen by a random permutation, get a
  class drawn uniformly from all C classes, the true one included, so the expected flip rate is
  R·(C−1)/C.
- asymmetric:R: each sample of a class the map names moves to its mapped class with chance R,
  drawn per sample; other classes keep their labels.
  - CIFAR-10: truck→automobile, bird→airplane, cat↔dog, deer→horse.
  - CIFAR-100: each class moves to the next of its superclass's five (in class order, cyclic).
  - digits: DIGITS_MAP, pairs often confused in handwriting: 1↔7, 3↔8, 4↔9 (0, 2, 5 and 6 kept).

Only training splits are noised; evaluation splits keep their clean labels. A noised split's shards
carry the noisy label in `cls` (what training reads) and the clean one in `clean.cls`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import W2SError

NOISE_KINDS = ("symmetric", "asymmetric")
CLEAN_FIELD = "clean.cls"  # webdataset encodes a field by its extension: an int, as cls
DEFAULT_NOISE_SEED = 42  # the official scripts' seed_dataset

CIFAR10_MAP = {9: 1, 2: 0, 3: 5, 5: 3, 4: 7}  # truck→automobile, bird→airplane, cat↔dog, deer→horse
DIGITS_MAP = {1: 7, 7: 1, 3: 8, 8: 3, 4: 9, 9: 4}


@dataclass(frozen=True)
class LabelNoise:
    kind: str
    rate: float
    seed: int = DEFAULT_NOISE_SEED

    @classmethod
    def parse(cls, spec: str, seed: int = DEFAULT_NOISE_SEED) -> "LabelNoise":
        """`symmetric:0.2` or `asymmetric:0.4`; a one-line error otherwise."""
        kind, _, rate = spec.partition(":")
        try:
            value = float(rate)
        except ValueError:
            value = None
        if kind not in NOISE_KINDS or value is None or not 0 <= value <= 1:
            raise W2SError(f"--label-noise {spec!r} is invalid: give symmetric:R or asymmetric:R with R between 0 and 1 "
                           "(e.g. symmetric:0.2)")
        return cls(kind, value, seed)

    def apply(self, labels: np.ndarray, num_classes: int, mapping: dict[int, int] | None = None) -> np.ndarray:
        """The noisy labels (int64, a new array) of clean `labels`; `mapping` is the asymmetric map."""
        labels = np.asarray(labels, dtype=np.int64)
        rng = np.random.default_rng(self.seed)
        noisy = labels.copy()
        if self.kind == "symmetric":
            chosen = rng.permutation(len(labels))[:int(len(labels) * self.rate)]
            noisy[chosen] = rng.integers(0, num_classes, size=len(chosen))
            return noisy
        if not mapping:
            raise W2SError("--label-noise asymmetric needs a class map (this data set has none)")
        draws = rng.random(len(labels))
        for source, target in mapping.items():
            move = (labels == source) & (draws < self.rate)
            noisy[move] = target
        return noisy


def superclass_map(fine: np.ndarray, coarse: np.ndarray) -> dict[int, int]:
    """CIFAR-100's asymmetric map: each class to the next of its superclass's classes (sorted, cyclic)."""
    mapping = {}
    for group in np.unique(coarse):
        members = np.unique(fine[coarse == group])
        for i, cls in enumerate(members):
            mapping[int(cls)] = int(members[(i + 1) % len(members)])
    return mapping


def flip_rates(clean: np.ndarray, noisy: np.ndarray, num_classes: int) -> list[float | None]:
    """Per clean class, the share of its samples whose label changed (None for a class with none)."""
    clean, noisy = np.asarray(clean), np.asarray(noisy)
    return [round(float((noisy[clean == c] != c).mean()), 6) if (clean == c).any() else None
            for c in range(num_classes)]


def noise_record(noise: LabelNoise, clean: np.ndarray, noisy: np.ndarray, num_classes: int, splits: list[str],
                 mapping: dict[int, int] | None) -> dict:
    """What the manifest says of the noise: its rule, seed, the noised splits, the class map, and
    the realised flip rate, overall and per clean class."""
    return {"kind": noise.kind, "rate": noise.rate, "seed": noise.seed, "splits": splits,
            "map": {str(k): v for k, v in mapping.items()} if mapping and noise.kind == "asymmetric" else None,
            "clean_field": CLEAN_FIELD, "flipped": int((np.asarray(clean) != np.asarray(noisy)).sum()),
            "samples": int(len(clean)),
            "flip_rate": round(float((np.asarray(clean) != np.asarray(noisy)).mean()), 6) if len(clean) else 0.0,
            "flip_rate_per_class": flip_rates(clean, noisy, num_classes)}

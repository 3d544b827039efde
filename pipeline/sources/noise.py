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
  - a folder (`prepare folder --noise-map FILE`): the user's map, a JSON object of class folder
    name to the class it is mistaken for (`read_noise_map`).

Only training splits are noised; evaluation splits keep their clean labels. A noised split's shards
carry the noisy label in `cls` (what training reads) and the clean one in `clean.cls`, which every
evaluation of those shards scores against (`scored_on_clean`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import numpy as np

from ...errors import W2SError
from .shards import read_manifest, shard_labels, url_name

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
                           "(e.g. symmetric:0.2)", option="--label-noise")
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
            raise W2SError("--label-noise asymmetric needs a class map (this data set has none)",
                           option="--label-noise")
        draws = rng.random(len(labels))
        for source, target in mapping.items():
            move = (labels == source) & (draws < self.rate)
            noisy[move] = target
        return noisy

    def corrupt(self, clean: np.ndarray, num_classes: int, splits: list[str],
                mapping: dict[int, int] | None = None) -> tuple[np.ndarray, dict]:
        """(the noisy labels of `clean`, the manifest's record of them: `noise_record`): what each
        `prepare ... --label-noise` does with the labels of the `splits` it noises."""
        noisy = self.apply(clean, num_classes, mapping)
        return noisy, noise_record(self, clean, noisy, num_classes, splits, mapping)


EVALUATION_SPLITS = frozenset({"val", "valid", "validation", "test"})  # never noised unless named


def read_noise_map(path: str, class_names: list[str]) -> dict[int, int]:
    """A user's asymmetric map, a JSON object {"cat": "dog", "dog": "cat"} of class (folder) names,
    as class indices; a one-line error naming the file and the entry at fault."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError) as exc:
        raise W2SError(f"--noise-map {path}: cannot read it as JSON ({exc})", option="--noise-map") from None
    if not isinstance(doc, dict) or not doc:
        raise W2SError(f"--noise-map {path}: must be a JSON object of class name to the class it is mistaken for, "
                       'e.g. {"cat": "dog", "dog": "cat"}', option="--noise-map")
    index = {name: i for i, name in enumerate(class_names)}
    mapping = {}
    for source, target in doc.items():
        for name in (source, target):
            if not isinstance(name, str) or name not in index:
                raise W2SError(f"--noise-map {path}: {name!r} (in {source!r}: {target!r}) is not a class; the classes "
                               f"are {', '.join(class_names[:10])}{', ...' if len(class_names) > 10 else ''}",
                               option="--noise-map")
        if source == target:
            raise W2SError(f"--noise-map {path}: {source!r} maps to itself", option="--noise-map")
        mapping[index[source]] = index[target]
    return mapping


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
    flipped = np.asarray(clean) != np.asarray(noisy)
    return {"kind": noise.kind, "rate": noise.rate, "seed": noise.seed, "splits": splits,
            "map": {str(k): v for k, v in mapping.items()} if mapping and noise.kind == "asymmetric" else None,
            "clean_field": CLEAN_FIELD, "flipped": int(flipped.sum()), "samples": int(len(clean)),
            "flip_rate": round(float(flipped.mean()), 6) if len(clean) else 0.0,
            "flip_rate_per_class": flip_rates(clean, noisy, num_classes)}


def noise_of(urls, storage_options: dict | None = None, mixed: bool = False) -> dict | None:
    """The manifest's noise record where every one of `urls` is a shard of a split that `prepare
    --label-noise` noised, None where none is (or there is no manifest). Where some are and some
    are not: with `mixed`, the record with how many shards are noised (what training records);
    otherwise a one-line error, as their labels could not be scored alike."""
    noised, record = [], None
    by_dir: dict[str, list[str]] = {}
    for url in urls:
        by_dir.setdefault(url.rsplit("/", 1)[0] if "/" in url else ".", []).append(url)
    for directory, members in by_dir.items():
        manifest = read_manifest(directory, storage_options) or {}
        noise = manifest.get("label_noise")
        names = {s["name"] for split in (noise or {}).get("splits", []) for s in manifest["splits"].get(split, [])}
        noised += [url_name(u) in names for u in members]
        record = record or noise
    if not any(noised):
        return None
    if not all(noised) and mixed:
        return {**record, "noised_shards": sum(noised), "shards": len(noised)}
    if not all(noised):
        clean = next(u for u, n in zip(urls, noised) if not n)
        raise W2SError(f"the shards mix noised splits ({', '.join(record['splits'])}) with clean ones ({url_name(clean)}): "
                       "evaluate them apart, as their labels cannot be scored alike")
    return record


def scored_on_clean(source):
    """`source` (a datasets.DataSource) to evaluate: where its shards carry noisy labels, its label
    field becomes their clean field and its `label_noise` says so; otherwise `source` itself."""
    record = noise_of(source.urls) if source.urls else None
    if record is None:
        return source
    return replace(source, label_field=record.get("clean_field") or CLEAN_FIELD, label_noise=record)


def described(record: dict) -> str:
    """One line for a noise record: "symmetric noise at 0.4 (seed 42, 35.8% flipped)"."""
    return f"{record['kind']} noise at {record['rate']} (seed {record['seed']}, {record['flip_rate']:.1%} flipped)"


def store_noise(store) -> dict | None:
    """The noise record of the shards a label store labelled (`noise_of`; a mix says how many)."""
    urls = [s["url"] for s in store.shards]
    return noise_of(urls, mixed=True) if urls else None


def clean_accuracy(store, record: dict) -> float:
    """A store's weak labels' accuracy against the clean labels: the clean field where a shard keeps
    one (read alone, seeking past the images), the shard's own label where it is not noised."""
    field = record.get("clean_field") or CLEAN_FIELD
    clean = {}
    for shard in store.shards:
        for key, label in shard_labels(shard["url"], field).items():
            clean[(shard["name"], key)] = label
    index = store.index()
    keys = zip(index["shard"].to_pylist(), index["key"].to_pylist())
    truth = np.array([clean.get(k, own) for k, own in zip(keys, index["label"].to_pylist())], dtype=np.int64)
    return float((index["pred"].to_numpy() == truth).mean()) if len(truth) else 0.0

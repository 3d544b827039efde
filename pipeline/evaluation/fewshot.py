"""Few-shot evaluation (the paper's few-shot scenario, after Meta-Baseline): a trained model's pooled
pre-logit features, classified by cosine similarity to each class's mean support feature.

An episode draws `ways` classes (among those with at least shots + queries samples), then per class
`shots` support and `queries` query samples without replacement; a query is right when the class
whose support centroid is most cosine-similar to it is its own. Episodes come from a numpy
Generator seeded with the episode seed alone, so two models are compared on the same episodes, and
one episode set serves every shot count (the K-shot support is the first K of the drawn ones).
The figure is the mean accuracy over episodes with its 95% interval, 1.96 x std / sqrt(episodes).
`eval --run RUN --episodes N` records its figures in RUN/few-shot.jsonl (`record`), where `report`
finds them and shows them as their own table.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from ...errors import W2SError
from .accuracy import checkpoint_on, outputs

RECORDS = "few-shot.jsonl"
SETTING = ("data", "split", "ways", "queries", "episodes", "episode_seed", "labels")  # what makes figures comparable


@dataclass(frozen=True)
class Episode:
    classes: np.ndarray  # (ways,) the drawn class labels
    support: np.ndarray  # (ways, max shots) sample indices
    query: np.ndarray  # (ways, queries) sample indices


def draw_episodes(labels: np.ndarray, *, ways: int, shots: int, queries: int, count: int, seed: int) -> list[Episode]:
    """`count` episodes over samples with `labels` (any ints), `shots` the largest shot count wanted."""
    labels = np.asarray(labels)
    classes, sizes = np.unique(labels, return_counts=True)
    usable = classes[sizes >= shots + queries]
    if len(usable) < ways:
        raise W2SError(f"--ways {ways}: only {len(usable)} classes have --shots {shots} + --queries {queries} samples "
                       f"(of {len(classes)} classes in the split)", option="--ways")
    members = {c: np.flatnonzero(labels == c) for c in usable}
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        chosen = rng.choice(usable, size=ways, replace=False)
        picks = np.stack([rng.choice(members[c], size=shots + queries, replace=False) for c in chosen])
        out.append(Episode(chosen, picks[:, :shots], picks[:, shots:]))
    return out


def episode_accuracy(features: np.ndarray, episode: Episode, shots: int) -> float:
    """One episode's query accuracy by cosine nearest centroid of the first `shots` supports."""
    f = np.asarray(features, dtype=np.float64)
    centroids = f[episode.support[:, :shots]].mean(axis=1)  # (ways, D)
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    q = f[episode.query.reshape(-1)]
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    predicted = (q @ centroids.T).argmax(axis=1)
    truth = np.repeat(np.arange(len(episode.classes)), episode.query.shape[1])
    return float((predicted == truth).mean())


def few_shot(features: np.ndarray, labels: np.ndarray, *, ways: int, shots: tuple[int, ...], queries: int,
             episodes: int, seed: int) -> dict:
    """{shots: {"accuracy", "ci95", "episodes"}} over one seeded episode set."""
    drawn = draw_episodes(labels, ways=ways, shots=max(shots), queries=queries, count=episodes, seed=seed)
    out = {}
    for k in shots:
        accuracy = np.array([episode_accuracy(features, e, k) for e in drawn])
        ci = 1.96 * accuracy.std(ddof=1) / np.sqrt(len(accuracy)) if len(accuracy) > 1 else float("nan")
        out[int(k)] = {"accuracy": float(accuracy.mean()), "ci95": float(ci), "episodes": len(accuracy)}
    return out


def pooled_features(model, urls, data_config: dict, *, image_fields, label_field, batch_size: int, workers: int,
                    device, precision: str = "fp32", decoder: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(features (N, D) float32, labels (N,)): the model's pooled pre-logits (timm's
    `forward_head(forward_features(x), pre_logits=True)`) on the evaluation crop of `urls`."""
    feats, labels = [], []
    for f, y in outputs(model, lambda m, x: m.forward_head(m.forward_features(x), pre_logits=True), urls,
                        data_config, image_fields=image_fields, label_field=label_field, batch_size=batch_size,
                        workers=workers, device=device, decoder=decoder, precision=precision):
        feats.append(f.float().flatten(1).cpu().numpy())
        labels.append(y.cpu().numpy())
    if not feats:
        raise W2SError("no samples to draw episodes from")
    return np.concatenate(feats), np.concatenate(labels)


def record(run_dir: str, result: dict, pick: str) -> str:
    """Append one few-shot evaluation of the run's `pick` checkpoint (`eval --episodes`'s result) to
    RUN/few-shot.jsonl; returns the file's path."""
    line = {**{k: result.get(k) for k in SETTING}, "pick": pick, "step": result.get("step"),
            "samples": result.get("samples"), "few_shot": {str(k): v for k, v in result["few_shot"].items()}}
    path = os.path.join(run_dir, RECORDS)
    try:
        with open(path, "a") as f:
            f.write(json.dumps(line, sort_keys=True) + "\n")
    except OSError as exc:
        raise W2SError(f"cannot record the few-shot figures in {path} ({exc.strerror or exc}); they were: "
                       + ", ".join(f"{k}-shot {v['accuracy']:.4f}" for k, v in result["few_shot"].items())) from None
    return path


def recorded(run_dir: str, step: int | None) -> list[dict]:
    """The run's few-shot records of its final weights (pick last) at `step`, the latest per setting;
    records of earlier weights (the run trained on after them) or of unreadable lines are left out."""
    path = os.path.join(run_dir, RECORDS)
    if not os.path.exists(path):
        return []
    latest = {}
    with open(path) as f:
        for line in f:
            try:
                r = json.loads(line)
                shots = {int(k): v for k, v in r["few_shot"].items()}
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            if r.get("pick") == "last" and (step is None or r.get("step") == step):
                latest[json.dumps([r.get(k) for k in SETTING])] = {**r, "few_shot": shots}
    return list(latest.values())


def few_shot_checkpoint(checkpoint: str, *, data: str, split: str | None = None, ways: int = 5,
                        shots: tuple[int, ...] = (1, 5), queries: int = 15, episodes: int = 600, seed: int = 0,
                        batch_size: int = 256, workers: int | None = None, device: str = "auto",
                        precision: str | None = None, decode: str | None = None, workspace=None) -> dict:
    """A checkpoint's few-shot accuracy on `data`'s `split` (fewshot.py: its pooled features,
    cosine nearest centroid, episodes from `seed`), chosen as `evaluate_checkpoint` chooses."""
    model, loading, about = checkpoint_on(checkpoint, data, split, device, precision, decode, workspace,
                                           batch_size, workers)
    features, labels = pooled_features(model, **loading)
    figures = few_shot(features, labels, ways=ways, shots=tuple(shots), queries=queries, episodes=episodes, seed=seed)
    return {"few_shot": figures, "ways": ways, "queries": queries, "episodes": episodes, "episode_seed": seed,
            "samples": len(labels), "feature_dim": int(features.shape[1]), **about}

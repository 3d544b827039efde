"""A model's per-sample predictions on an evaluation split, kept as a small Parquet file, so that
per-class tables, paired tests between runs and the misfit to the weak model need no re-evaluation.

    <run>/predictions-<split>.parquet    key, label, pred, confidence (max softmax), and each class's
                                          logit where the data set has at most LOGITS_UP_TO classes

`train` writes its final validation's; `eval --run RUN` (the final weights) writes the split it scores;
`report` keeps the weak model's beside its cached accuracy. The misfit of a student to its weak model
(the KL from the student's predictive distribution to the weak model's, and their argmax disagreement)
is what theory bounds the student's gain by: for the cross-entropy, the student's gain in loss over
the weak model is at least that KL (Mulgund & Pabbaraju, ICML 2025; Charikar et al. 2024 for the
squared loss).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ...errors import W2SError
from ...storage.files import table_bytes
from ...storage.fsutil import write_whole

LOGITS_UP_TO = 100  # classes; above, only argmax and confidence are kept (ImageNet's val: 50k x 1000 floats is 200 MB)


def predictions_file(run_dir: str, split: str) -> str:
    return os.path.join(run_dir, f"predictions-{split}.parquet")


@dataclass
class Predictions:
    keys: list[str]
    labels: np.ndarray  # (N,) int64 ground truth
    pred: np.ndarray  # (N,) int64 argmax
    confidence: np.ndarray  # (N,) float32 max softmax probability
    logits: np.ndarray | None = None  # (N, C) float32, where kept

    @classmethod
    def from_logits(cls, keys: list[str], labels, logits) -> "Predictions":
        logits = np.asarray(logits, np.float32)
        probs = softmax(logits)
        return cls(list(keys), np.asarray(labels, np.int64), probs.argmax(1).astype(np.int64),
                   probs.max(1).astype(np.float32), logits)

    @property
    def correct(self) -> np.ndarray:
        return self.pred == self.labels

    @property
    def probs(self) -> np.ndarray | None:
        return None if self.logits is None else softmax(self.logits)

    def table(self) -> pa.Table:
        columns = {"key": pa.array(self.keys, pa.string()), "label": pa.array(self.labels, pa.int64()),
                   "pred": pa.array(self.pred, pa.int64()), "confidence": pa.array(self.confidence, pa.float32())}
        if self.logits is not None and self.logits.shape[1] <= LOGITS_UP_TO:
            width = self.logits.shape[1]
            flat = pa.array(self.logits.astype(np.float32).ravel(), pa.float32())
            columns["logits"] = pa.FixedSizeListArray.from_arrays(flat, width)
        return pa.table(columns)

    def aligned(self, other: "Predictions", what: str) -> tuple["Predictions", "Predictions"]:
        """This and `other` on the samples they share, in this one's order; samples of one the other
        lacks are an error naming `what` was compared and the first missing key."""
        if self.keys == other.keys:
            return self, other
        where = {k: i for i, k in enumerate(other.keys)}
        missing = [k for k in self.keys if k not in where]
        if missing or len(where) != len(self.keys):
            extra = missing[0] if missing else next(k for k in other.keys if k not in set(self.keys))
            raise W2SError(f"{what}: the predictions are of different samples (key {extra!r} is in one only); "
                           "compare runs scored on the same split")
        order = np.array([where[k] for k in self.keys])
        return self, Predictions(self.keys, other.labels[order], other.pred[order], other.confidence[order],
                                 None if other.logits is None else other.logits[order])


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def write_predictions(path: str, predictions: Predictions) -> str:
    """Whole or not at all (storage's write_whole): a cut write never leaves a file read as whole."""
    write_whole(path, table_bytes(predictions.table()))
    return path


def read_predictions(path: str) -> Predictions:
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise W2SError(f"predictions {path} cannot be read ({str(exc).splitlines()[0][:160]}); `w2s-pipe eval --run` "
                       "writes them again") from None
    logits = None
    if "logits" in table.column_names:
        column = table.column("logits").combine_chunks()
        logits = column.flatten().to_numpy(zero_copy_only=False).reshape(len(table), column.type.list_size)
    return Predictions(table.column("key").to_pylist(), table.column("label").to_numpy().astype(np.int64),
                       table.column("pred").to_numpy().astype(np.int64),
                       table.column("confidence").to_numpy().astype(np.float32), logits)


def misfit(student: Predictions, weak: Predictions) -> dict:
    """The student's misfit to the weak model on the samples both scored, beside its gain:
    {"kl": mean KL(student || weak) in nats (None without both logits), "disagree": the share of
    samples whose argmax differ, "gain_ce": the weak model's mean cross-entropy to the ground
    truth minus the student's (None without logits), "gain_top1": the top-1 difference, "n"}."""
    student, weak = student.aligned(weak, "the student's and the weak model's predictions")
    out = {"disagree": float(np.mean(student.pred != weak.pred)),
           "gain_top1": float(np.mean(student.correct) - np.mean(weak.correct)), "kl": None, "gain_ce": None,
           "n": len(student.keys)}
    if student.logits is not None and weak.logits is not None:
        p, q = student.probs, weak.probs
        tiny = 1e-12
        out["kl"] = float(np.mean(np.sum(p * (np.log(p + tiny) - np.log(q + tiny)), axis=1)))
        rows = np.arange(len(p))
        out["gain_ce"] = float(np.mean(-np.log(q[rows, weak.labels] + tiny)) - np.mean(-np.log(p[rows, student.labels] + tiny)))
    return out


def per_class(predictions: Predictions, num_classes: int | None = None) -> np.ndarray:
    """Top-1 of each true class (NaN for a class with no sample)."""
    classes = int(num_classes or (max(predictions.labels.max(), predictions.pred.max()) + 1))
    hits = np.bincount(predictions.labels, weights=predictions.correct.astype(np.float64), minlength=classes)
    counts = np.bincount(predictions.labels, minlength=classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, hits / counts, np.nan)

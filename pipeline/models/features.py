"""A model's frozen pooled features: what its classifier reads (timm's pre-logits), the rows of a
feature store (`w2s-pipe features`) and the inputs of a probe run (`train --features`).

For a timm model, `forward_head(forward_features(x), pre_logits=True)` is the classifier's input
(pooled, normalised where the model normalises before its head), so `get_classifier()(features)`
is the model's own output: a head trained on stored features is the head `--linear-probe` trains
on the same images.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

FLOAT16_MAX = float(np.finfo(np.float16).max)


def pooled_features(model, images, *, autocast=None) -> dict:
    """Normalised images (N, 3, H, W) on the model's device -> on the device, "features" float16
    (N, D) and "bad" (N,) bool: rows not finite or past float16's range (never stored). Call it
    under `torch.inference_mode()`."""
    with autocast or contextlib.nullcontext():
        features = model.forward_head(model.forward_features(images), pre_logits=True)
    features = features.float().flatten(1)
    bad = ~torch.isfinite(features).all(1) | (features.abs() > FLOAT16_MAX).any(1)
    return {"bad": bad, "features": features.half()}


def feature_width(model) -> int:
    """D, the width of the model's pooled features (its classifier's input)."""
    classifier = model.get_classifier()
    width = classifier.in_features if isinstance(classifier, torch.nn.Linear) else (
        getattr(model, "head_hidden_size", None) or getattr(model, "num_features", None))
    if not width:
        raise ValueError(f"cannot tell the feature width of {type(model).__name__}")
    return int(width)

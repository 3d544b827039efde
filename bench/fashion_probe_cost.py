"""What OpenAI's probe protocol costs on Fashion-MNIST, from stores and from the images, in one run.

Reads a finished `w2s-pipe study fashion-probe` workspace (its prepared data, its rotation backbone,
its store `centre`) and times, one after the other on this machine:
  1. the backbone's features of transfer's 45,000 images, stored once (`features`);
  2. a probe from the stores (openai_probe: hard labels, batch 100, EPOCHS epochs), no image decoded;
  3. the same probe as `train --linear-probe` on the images (decoded and run through the frozen
     backbone every epoch), EPOCHS epochs.
Prints seconds, probes per minute, the per-epoch ratio (3) / (2), and how many probes pay for (1).

    python bench/fashion_probe_cost.py WORKSPACE [--epochs 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _util  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workspace", help="a fashion-probe study's workspace (w2s-pipe study fashion-probe --out DIR)")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    ws = os.path.abspath(args.workspace)
    os.environ["W2S_DATA"] = os.path.join(ws, "data")
    from w2s_pipe.stages.features_config import FeaturesConfig
    from w2s_pipe.stages.label import run_label
    from w2s_pipe.stages.train import TrainConfig, run_train

    backbone = os.path.join(ws, "runs", "weak-rotation", "last.pt")
    labels = os.path.join(ws, "stores", "centre")
    for path in (backbone, labels):
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: run `w2s-pipe study fashion-probe --out {ws}` first")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        features = run_label(FeaturesConfig(checkpoint=backbone, data="fashion-mnist", split="transfer", workers=1,
                                            out=os.path.join(tmp, "features"), progress=False,
                                            workspace=tmp).label_config()).store
        out["features_s"] = time.perf_counter() - started
        common = dict(config="openai_probe", strong="resnet10t", strong_checkpoint=backbone, labels=labels,
                      loss="hard", epochs=args.epochs, no_eval=True, progress=False, workspace=tmp, data="fashion-mnist")
        for name, extra in (("stores", dict(features=features)), ("images", dict(linear_probe=True, workers=1))):
            started = time.perf_counter()
            run_train(TrainConfig(**common, **extra, run=os.path.join(tmp, name)))
            out[f"{name}_s"] = time.perf_counter() - started
    per_epoch = {k: out[f"{k}_s"] / args.epochs for k in ("stores", "images")}
    out.update(epochs=args.epochs, ratio=per_epoch["images"] / per_epoch["stores"],
               break_even=out["features_s"] / (per_epoch["images"] - per_epoch["stores"]) / 10)
    print(f"features of transfer (45,000 images, once): {out['features_s']:.1f} s")
    print(f"probe from stores: {per_epoch['stores']:.2f} s/epoch ({60 / (10 * per_epoch['stores']):.1f} ten-epoch "
          f"probes/min)")
    print(f"linear probe on the images: {per_epoch['images']:.2f} s/epoch")
    print(f"ratio (images / stores, per epoch, same run): {out['ratio']:.1f}x; the features pay for themselves "
          f"after {out['break_even']:.2f} ten-epoch probes")
    _util.save("fashion_probe_cost", out)


if __name__ == "__main__":
    main()

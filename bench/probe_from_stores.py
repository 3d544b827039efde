"""What a probe from stores costs against a linear probe on images (issue 28), in one run.

1. digits: resnet10t (24 px, a random backbone saved as a checkpoint) as the strong model; its
   feature stores of transfer and val; the same 8-epoch adaptconf run with `train --features` and
   with `train --linear-probe` on the images. Runs per minute and their ratio.
2. ImageNet-sized stores, synthetic: N rows of D-d float16 features and C-class float16 logits in
   shards of 1,000 (written here with the store's own writer), one epoch of `train --features`
   (batch 1024, adaptconf, no evaluation): rows per second, seconds per epoch. Against it, the
   backbone's forward alone on random 224 px images (vit_base_patch16_224, batch 32; a lower bound
   on a linear probe on images, which also decodes), extrapolated to N rows per epoch.
3. Bytes per sample of the feature store and of the label store.

    python bench/probe_from_stores.py [--rows 1281167] [--width 768] [--classes 1000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def digits(tmp: str) -> dict:
    import timm

    from w2s_pipe.pipeline.image.preprocess import data_config_for
    from w2s_pipe.pipeline.models.checkpoint import save_checkpoint
    from w2s_pipe.stages.features_config import FeaturesConfig
    from w2s_pipe.stages.label import LabelConfig, run_label
    from w2s_pipe.stages.prepare import prepare_digits
    from w2s_pipe.stages.train import TrainConfig, run_train
    from w2s_pipe.storage import open_store

    os.environ["W2S_HOME"] = os.path.join(tmp, "ws")
    prepare_digits(os.path.join(tmp, "ws", "data", "digits"))
    torch.manual_seed(0)
    weak = timm.create_model("test_resnet", num_classes=10)
    save_checkpoint(f"{tmp}/weak.pt", weak.state_dict(), model_name="test_resnet", num_classes=10,
                    data_config=data_config_for(weak, 32))
    strong = timm.create_model("resnet10t", num_classes=10)
    save_checkpoint(f"{tmp}/strong.pt", strong.state_dict(), model_name="resnet10t", num_classes=10,
                    data_config=data_config_for(strong, 24))
    labels = run_label(LabelConfig.tiny(weak_checkpoint=f"{tmp}/weak.pt")).store
    started = time.perf_counter()
    train = run_label(FeaturesConfig.tiny(checkpoint=f"{tmp}/strong.pt", img_size=24).label_config()).store
    run_label(FeaturesConfig.tiny(checkpoint=f"{tmp}/strong.pt", img_size=24, split="val").label_config())
    embed = time.perf_counter() - started
    common = dict(strong="resnet10t", strong_checkpoint=f"{tmp}/strong.pt", img_size=24, labels=labels, epochs=8,
                  batch_size=64, loss="adaptconf", opt="adamw", lr=1e-3)
    out = {"embed_s": embed}
    for name, extra in (("probe", dict(features=train)), ("images", dict(linear_probe=True, workers=1))):
        started = time.perf_counter()
        result = run_train(TrainConfig.tiny(**common, **extra, run=name))
        out[name] = (time.perf_counter() - started, result.val_top1)
    out["bytes"] = {k: open_store(u).size_bytes() / open_store(u).num_samples for k, u in
                    (("features", train), ("labels", labels))}
    return out


def synthetic(tmp: str, rows: int, width: int, classes: int, shard: int = 1000) -> dict:
    from w2s_pipe import __version__
    from w2s_pipe.pipeline.weak.statistics import stored_outputs
    from w2s_pipe.stages.train import TrainConfig
    from w2s_pipe.storage import open_store, schema
    from w2s_pipe.storage.writer import StoreWriter

    counts = [min(shard, rows - i) for i in range(0, rows, shard)]
    shards = [{"name": f"synth-{i:06d}.tar", "url": f"/absent/synth-{i:06d}.tar", "count": n, "bytes": 0}
              for i, n in enumerate(counts)]
    data = {"name": "shards", "split": "train", "pattern": "/absent/synth-*.tar", "image_field": "jpg",
            "label_field": "cls"}
    common = dict(num_classes=classes, class_names=None, preprocessing={"input_size": [3, 224, 224]},
                  precision="bf16", data=data, shards=shards, fingerprint="synthetic", topk=None,
                  tool_version=__version__, config={})
    writers = {"labels": StoreWriter.create(f"{tmp}/labels", schema.store_attrs(
        weak={"model": "synthetic_weak"}, **common)),
        "features": StoreWriter.create(f"{tmp}/features", schema.store_attrs(
            weak={"model": "vit_base_patch16_224"}, features=width, **common))}
    generator = np.random.default_rng(0)
    started = time.perf_counter()
    for i, n in enumerate(counts):
        keys = [f"{i:06d}_{j:04d}" for j in range(n)]
        labels = generator.integers(0, classes, n)
        logits = torch.from_numpy(generator.standard_normal((n, classes), dtype=np.float32) * 2)
        logits[torch.arange(n), torch.from_numpy(labels)] += 4
        weak = {k: v.numpy() for k, v in stored_outputs(logits, None).items()}
        writers["labels"].write_shard(i, keys, labels, weak)
        features = generator.standard_normal((n, width), dtype=np.float32).astype(np.float16)
        writers["features"].write_shard(i, keys, labels, {"features": features})
    for w in writers.values():
        w.finalize()
    written = time.perf_counter() - started
    cfg = TrainConfig(strong="vit_base_patch16_224", pretrained=False, labels=f"{tmp}/labels",
                      features=f"{tmp}/features", loss="adaptconf", epochs=1, batch_size=1024, opt="adamw", lr=1e-3,
                      no_eval=True, precision="fp32", progress=False, run=f"{tmp}/run", workers=0)
    return {"write_s": written, "bytes": {k: open_store(f"{tmp}/{k}").size_bytes() / rows for k in writers},
            "cfg": cfg}


def image_forward_rate(batches: int = 2, batch: int = 32) -> float:
    import timm

    model = timm.create_model("vit_base_patch16_224", num_classes=1000).eval()
    x = torch.randn(batch, 3, 224, 224)
    with torch.inference_mode():
        model(x[:4])
        started = time.perf_counter()
        for _ in range(batches):
            model(x)
    return batches * batch / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_281_167)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--classes", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = digits(tmp)
        (probe_s, probe_top1), (image_s, image_top1) = d["probe"], d["images"]
        print(f"digits, 8 epochs of adaptconf on resnet10t's head: from stores {probe_s:.1f} s "
              f"({60 / probe_s:.1f} runs/min, val top-1 {probe_top1:.4f}), on images (--linear-probe, 1 loading "
              f"process) {image_s:.1f} s ({60 / image_s:.1f} runs/min, {image_top1:.4f}): **{image_s / probe_s:.1f}x**; "
              f"the two feature stores took {d['embed_s']:.1f} s, once")
        print(f"digits bytes per sample: feature store {d['bytes']['features']:.0f} (512-d), label store "
              f"{d['bytes']['labels']:.0f} (10 classes)")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        s = synthetic(tmp, args.rows, args.width, args.classes)
        print(f"synthetic stores: {args.rows} rows written in {s['write_s']:.0f} s; bytes per sample: features "
              f"{s['bytes']['features']:.0f} ({args.width}-d fp16), labels {s['bytes']['labels']:.0f} "
              f"({args.classes} fp16 logits + statistics)")
        from w2s_pipe.stages import train as train_stage

        train_stage.run_weights = lambda cfg: None  # the synthetic features are no model's: skip the weights check
        started = time.perf_counter()
        result = train_stage.run_train(s["cfg"])
        epoch_s = time.perf_counter() - started
        rate = image_forward_rate()
        print(f"one probe epoch over {args.rows} rows (batch 1024, {result.step} steps, adaptconf): {epoch_s:.0f} s "
              f"including loading both stores ({args.rows / epoch_s:.0f} rows/s); vit_base_patch16_224's forward "
              f"alone on 224 px: {rate:.1f} img/s, so at least {args.rows / rate / 3600:.1f} h an epoch on images: "
              f"**{args.rows / rate / epoch_s:.0f}x**")


if __name__ == "__main__":
    main()

"""Benchmark 1: `label` end to end against (a) the model alone and (b) the loader alone.

    python bench/label_throughput.py [--model resnet18] [--samples 512] [--batch-size 64] [--workers N]
                                     [--decode cpu,pil]

(a) forward passes on pre-decoded batches already in memory (and on the device); (b) the decoder
alone: the labelling loader (tar reading, decoding, the model's eval resize and crop, batching)
with no model, and for `--decode gpu` (needs CUDA) the device's batched decode and crop of what its
loader ships, synchronised. Prints images/s of each and label / min(a, b) for each decoder; 1.0
means the pipeline adds nothing to its slowest part.
The measurements alternate over --rounds rounds and each figure is the best of its rounds: on a
shared machine the least disturbed run is the one that measures the code.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import _util


def _args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--decode", default="cpu,pil", help="comma-separated decoders to measure: cpu, pil, gpu")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "w2s-bench-jpeg"))
    return ap.parse_args()


def main():
    args = _args()

    import torch

    from w2s_pipe.pipeline.image.preprocess import DeviceNormalize, Preprocess, TensorGeometry
    from w2s_pipe.pipeline.loaders.shard_batches import ImageBatch, ShardBatches, batch_images, events, label_loader
    from w2s_pipe.pipeline.loaders.workers import default_workers
    from w2s_pipe.pipeline.models.build import load_model
    from w2s_pipe.pipeline.runtime import distributed
    from w2s_pipe.pipeline.sources.shards import expand_pattern
    from w2s_pipe.stages.label import LabelConfig, run_label

    pattern = _util.jpeg_shards(args.data, args.samples)
    ckpt = _util.checkpoint(os.path.join(args.data, f"{args.model}.pt"), args.model, 1000)
    workers = args.workers if args.workers is not None else default_workers()
    device = distributed.pick_device("auto")
    precision = distributed.resolve_precision(args.precision, device)
    loaded = load_model(None, checkpoint=ckpt, num_classes=1000)
    urls = expand_pattern(pattern)

    decoders = args.decode.split(",")
    if "gpu" in decoders and device.type != "cuda":
        raise SystemExit(f"--decode gpu needs a CUDA device; this machine has {device}")
    model = loaded.model.to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    normalize = DeviceNormalize(loaded.data_config, device)
    dtype = distributed.autocast_dtype(precision)

    def loader_alone(decode):
        """(b): tar reading, decoding, resize and crop, batching; no model."""
        ds = ShardBatches(list(enumerate(urls)), prepare=Preprocess(loaded.data_config, decode), batch_size=args.batch_size,
                          image_fields=("jpg",), label_field="cls")
        geometry = TensorGeometry(loaded.data_config)
        t, n = time.perf_counter(), 0
        for item in events(label_loader(ds, workers, device.type == "cuda")):
            if isinstance(item, ImageBatch):  # --decode gpu: the device's part is the decoder's too
                images, keys, _, _ = batch_images(item, geometry, device, "bench")
                n += len(keys)
                if len(batches) < 3:
                    batches.append(normalize(images))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return n / (time.perf_counter() - t)

    def model_alone():
        """(a): forward passes on batches already decoded, normalised and on the device."""
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=precision != "fp32"):
            model(batches[0])  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            t, n = time.perf_counter(), 0
            while n < args.samples:
                for x in batches:
                    model(x)
                    n += len(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
        return n / (time.perf_counter() - t)

    def label(decode):
        with tempfile.TemporaryDirectory() as tmp:
            return run_label(LabelConfig(weak=None, weak_checkpoint=ckpt, data=pattern, labels=os.path.join(tmp, "store"),
                                         batch_size=args.batch_size, workers=workers, precision=precision,
                                         decode=decode, progress=False)).images_per_s

    batches: list = []
    rounds = {"model": [], **{f"loader {d}": [] for d in decoders}, **{f"label {d}": [] for d in decoders}}
    for r in range(args.rounds):  # each figure printed as it is taken: a run stopped by a timeout still says them
        for decode in decoders:
            _util.taken(rounds, f"loader {decode}", loader_alone(decode), r)
        _util.taken(rounds, "model", model_alone(), r)
        for decode in decoders:
            _util.taken(rounds, f"label {decode}", label(decode), r)
        _util.save("label_throughput", {"args": vars(args), "workers": workers, "rounds": rounds, "partial": True})
    _summarise(args, rounds, decoders, workers, precision, device)

def _summarise(args, rounds: dict, decoders: list[str], workers: int, precision: str, device) -> None:
    """Each figure's best round, the ratios, and the results file."""
    best = {k: max(v) for k, v in rounds.items()}
    model_ips = best["model"]
    loader_ips = {d: best[f"loader {d}"] for d in decoders}
    label_ips = {d: best[f"label {d}"] for d in decoders}
    ratio = {d: label_ips[d] / min(model_ips, loader_ips[d]) for d in decoders}
    print(f"{args.model}, {args.samples} JPEGs 500x375, batch {args.batch_size}, {workers} workers, {precision}, {device}")
    print(f"best of {args.rounds} rounds each (all rounds in the JSON)")
    print(f"model alone            {model_ips:8.1f} img/s")
    for decode in decoders:
        print(f"decoder alone ({decode:3s})    {loader_ips[decode]:8.1f} img/s")
        print(f"label (--decode {decode:3s})   {label_ips[decode]:8.1f} img/s   "
              f"label / min(model, loader) = {ratio[decode]:.3f}")
    if "cpu" in decoders and "pil" in decoders:
        print(f"label cpu / label pil = {label_ips['cpu'] / label_ips['pil']:.2f}x")
    print("results:", _util.save("label_throughput", {"args": vars(args), "workers": workers, "precision": precision,
                                                       "model_ips": model_ips, "loader_ips": loader_ips,
                                                       "label_ips": label_ips, "ratio": ratio, "rounds": rounds}))


if __name__ == "__main__":
    main()

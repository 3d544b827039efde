"""CPU cost per image of each worker-side decoder, on one thread.

    python bench/decode_cost.py [--samples 256] [--model resnet18]

For ImageNet-like JPEGs (500x375) and the model's eval preprocessing: `--decode pil` (PIL decode,
PIL resize and crop) against `--decode cpu` (torchvision's libjpeg-turbo decode, tensor resize and
crop); both end in the uint8 crop a worker ships. Prints ms per image and the ratio; the cost is
what a loading process spends per image, so images/s per core is its inverse.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import _util


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "w2s-bench-jpeg"))
    args = ap.parse_args()

    import torch

    from w2s_pipe.pipeline.image.preprocess import Preprocess
    from w2s_pipe.pipeline.models.build import load_model
    from w2s_pipe.pipeline.sources.shards import expand_pattern, iter_samples

    torch.set_num_threads(1)  # one loading process does one image at a time
    pattern = _util.jpeg_shards(args.data, args.samples)
    data_config = load_model(None, checkpoint=_util.checkpoint(os.path.join(args.data, f"{args.model}.pt"), args.model, 1000),
                             num_classes=1000).data_config
    samples = [s for url in expand_pattern(pattern) for s in iter_samples(url)]
    ms = {}
    for decode in ("pil", "cpu"):
        prepare = Preprocess(data_config, decode)
        prepare(samples[0], ("jpg",), "warm-up")
        best = float("inf")
        for _ in range(3):  # best of three passes: the machine is shared
            t = time.perf_counter()
            for s in samples:
                prepare(s, ("jpg",), "bench")
            best = min(best, time.perf_counter() - t)
        ms[decode] = 1000 * best / len(samples)
        print(f"--decode {decode}: {ms[decode]:.2f} ms per image ({1000 / ms[decode]:.0f} img/s per core)")
    print(f"pil / cpu = {ms['pil'] / ms['cpu']:.2f}x  ({data_config['input_size'][1]} px, {data_config['interpolation']}, "
          f"crop_pct {data_config.get('crop_pct')})")
    print("results:", _util.save("decode_cost", {"args": vars(args), "ms_per_image": ms, "ratio": ms["pil"] / ms["cpu"]}))


if __name__ == "__main__":
    main()

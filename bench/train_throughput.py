"""Benchmark: stage two's images/s: the student's step alone, the loader alone, `train` end to end,
and a run from the store against one that runs the teacher on every batch.

    python bench/train_throughput.py --strong resnet50 --weak resnet18 --img-size 224 --batch-size 256 \\
        --samples 8192 --steps 30                   # the GPU figures of issue 12
    python bench/train_throughput.py --strong resnet18 --weak test_resnet --img-size 64 --batch-size 32 \\
        --samples 512 --steps 6 --rounds 1          # a CPU smoke run

On ImageNet-sized JPEGs (bench/_util's recipe), labelled once by the weak model (not timed):
  step alone   the student's train_step on one device-resident batch, repeated
  loader alone the training stream with its store join, decoded and augmented (on the device for
               --decode gpu), normalised, without the model
  train        `run_train` itself (`w2s-pipe train`): its logged images/s after the warm-up window
  cached/online the same loop (loader, device augmentation, step) with weak logits from the store,
               or from the teacher run on each batch; warm-up steps excluded, the two arms'
               order alternated over rounds, each figure the best of its rounds
Prints a table and the ratios last; results also go to bench/results/train_throughput.json.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time

import _util


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strong", default="resnet50")
    ap.add_argument("--weak", default="resnet18")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--samples", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=5, help="steps run before timing")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--decode", default="auto")
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "w2s-bench-jpeg"))
    args = ap.parse_args()

    from w2s_pipe.pipeline.image.decode import resolve_decoder
    from w2s_pipe.pipeline.loaders.workers import default_workers
    from w2s_pipe.pipeline.runtime import distributed
    from w2s_pipe.stages.label import LabelConfig, run_label

    device = distributed.pick_device("auto")
    precision = distributed.resolve_precision("auto", device)
    decoder = resolve_decoder(args.decode, device)
    workers = args.workers if args.workers is not None else default_workers()
    pattern = _util.jpeg_shards(args.data, args.samples)
    ckpt = _util.checkpoint(os.path.join(args.data, f"{args.weak}-{args.img_size}.pt"), args.weak, 1000, args.img_size)
    with tempfile.TemporaryDirectory() as tmp:
        store = run_label(LabelConfig(weak=None, weak_checkpoint=ckpt, data=pattern, labels=os.path.join(tmp, "s"),
                                      workers=workers, progress=False)).store
        arms = Arms(args, store, ckpt, device, precision, decoder, workers)
        rounds = {"step": [], "loader": [], "train": [], "cached": [], "online": []}
        for r in range(args.rounds):  # each figure printed as it is taken: a run stopped by a timeout still says them
            _util.taken(rounds, "step", arms.step_alone(), r)
            _util.taken(rounds, "loader", arms.loader_alone(), r)
            _util.taken(rounds, "train", arms.train(os.path.join(tmp, f"run{r}")), r)
            for online in ((False, True) if r % 2 == 0 else (True, False)):
                _util.taken(rounds, "online" if online else "cached", arms.loop(online), r)
            _util.save("train_throughput", {"args": vars(args), "workers": workers, "rounds": rounds, "partial": True})
    best = {k: max(v) for k, v in rounds.items()}
    print(f"strong {args.strong} from weak {args.weak}, {args.img_size} px, batch {args.batch_size}, {precision}, "
          f"{device}, --decode {decoder}, {workers} loading processes, best of {args.rounds} rounds (images/s)")
    for name, label in (("step", "student step alone (device-resident batch)"), ("loader", "loader alone"),
                        ("train", "train from the store (end to end)"), ("cached", "loop, weak logits from the store"),
                        ("online", "loop, teacher on every batch")):
        print(f"  {label:<45} {best[name]:>9.0f}")
    print(f"train / step alone = {best['train'] / best['step']:.2f}   "
          f"cached / online = {best['cached'] / best['online']:.2f}   "
          f"loader / step alone = {best['loader'] / best['step']:.2f}")
    _util.save("train_throughput", {"args": vars(args), "device": str(device), "precision": precision,
                                    "decode": decoder, "workers": workers, "rounds": rounds})


class Arms:
    def __init__(self, args, store, ckpt, device, precision, decoder, workers):
        import torch

        from w2s_pipe.pipeline.models.build import load_model
        from w2s_pipe.pipeline.runtime import distributed

        self.args, self.store, self.device, self.precision = args, store, device, precision
        self.decoder, self.workers = decoder, workers
        self.autocast = torch.autocast(device.type, dtype=distributed.autocast_dtype(precision),
                                       enabled=precision != "fp32")
        self.teacher = load_model(None, checkpoint=ckpt, num_classes=1000).model.to(device).eval()
        if device.type == "cuda":
            self.teacher = self.teacher.to(memory_format=torch.channels_last)

    def sync(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def student(self):
        import torch

        from w2s_pipe.pipeline.models.build import create_model
        from w2s_pipe.pipeline.train.optim import build_optimizer

        torch.manual_seed(0)
        model = create_model(self.args.strong, 1000).to(self.device).train()
        if self.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        return model, build_optimizer(model, opt="adamw", lr=1e-4, weight_decay=0.05)

    def batches(self):
        """Batches on the device, as the trainer makes them: (images, weak logits, labels)."""
        from w2s_pipe.pipeline.image.preprocess import DeviceNormalize
        from w2s_pipe.pipeline.loaders.join import StoreJoin
        from w2s_pipe.pipeline.loaders.shard_batches import LoadFailed
        from w2s_pipe.pipeline.loaders.train_stream import TrainStream, train_loader
        from w2s_pipe.pipeline.sources.shards import expand_pattern
        from w2s_pipe.pipeline.views.params import TrainViews
        from w2s_pipe.pipeline.views.pixels import DeviceAugment, TrainAugment
        from w2s_pipe.storage import open_store

        a = open_store(self.store).attrs
        config = {"input_size": [3, self.args.img_size, self.args.img_size],
                  **{k: a["preprocessing"][k] for k in ("interpolation", "mean", "std")}}
        stream = TrainStream(expand_pattern(a["data"]["pattern"]), augment=TrainAugment(config, TrainViews(0), self.decoder),
                             image_fields=("jpg",), label_field="cls", need_labels=False, join=StoreJoin(self.store),
                             seed=0, shuffle_buffer=1000, batch_size=self.args.batch_size)
        on_device = DeviceAugment(config, self.device) if self.decoder == "gpu" else None
        normalize = DeviceNormalize(config, self.device)
        for batch in train_loader(stream, self.workers, self.device.type == "cuda"):
            if isinstance(batch, LoadFailed):
                raise RuntimeError(batch.message)
            view = batch["view"].to(self.device)
            images = on_device(batch["blobs"], view, batch["key"]) if on_device else batch["image"]
            yield normalize(images), batch["weak"].to(self.device, non_blocking=True), batch["label"].to(self.device)

    def step_alone(self) -> float:
        import torch

        from w2s_pipe.pipeline.train.losses import objective
        from w2s_pipe.stages.train import train_step

        model, opt = self.student()
        n, s = self.args.batch_size, self.args.img_size
        batch = {"image": torch.randn(n, 3, s, s, device=self.device), "weak": torch.randn(n, 1000, device=self.device),
                 "target": torch.zeros(n, dtype=torch.long, device=self.device)}
        if self.device.type == "cuda":
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        loss = objective("adaptconf", threshold=4.0)
        for i in range(self.args.warmup + self.args.steps):
            if i == self.args.warmup:
                self.sync()
                t = time.perf_counter()
            train_step(model, [batch], opt, loss, progress=0.5, autocast=self.autocast)
        self.sync()
        return n * self.args.steps / (time.perf_counter() - t)

    def loader_alone(self) -> float:
        it = self.batches()
        for _ in range(self.args.warmup):
            next(it)
        self.sync()
        t = time.perf_counter()
        n = sum(len(images) for images, _, _ in itertools.islice(it, self.args.steps))
        self.sync()
        return n / (time.perf_counter() - t)

    def loop(self, online: bool) -> float:
        """Loader, device augmentation and the step, weak logits from the store or the teacher."""
        import torch

        from w2s_pipe.pipeline.train.losses import objective
        from w2s_pipe.stages.train import train_step

        model, opt = self.student()
        loss = objective("adaptconf", threshold=4.0)
        it = self.batches()
        for i in range(self.args.warmup + self.args.steps):
            if i == self.args.warmup:
                self.sync()
                t = time.perf_counter()
            images, weak, labels = next(it)
            if online:
                with torch.inference_mode(), self.autocast:
                    weak = self.teacher(images).float()
                weak = weak.clone()  # out of inference mode, for the loss
            train_step(model, [{"image": images, "weak": weak, "target": labels}], opt, loss, progress=0.5,
                       autocast=self.autocast)
        self.sync()
        return self.args.batch_size * self.args.steps / (time.perf_counter() - t)

    def train(self, run_dir: str) -> float:
        """`run_train` itself; its windows after the first (the warm-up) give the figure."""
        from w2s_pipe.pipeline.train.runs import read_metrics
        from w2s_pipe.stages.train import TrainConfig, run_train

        steps = self.args.warmup * (1 + -(-self.args.steps // self.args.warmup))
        result = run_train(TrainConfig(strong=self.args.strong, labels=self.store, img_size=self.args.img_size,
                                       batch_size=self.args.batch_size, epochs=1, steps_per_epoch=steps, no_eval=True,
                                       log_every=self.args.warmup, workers=self.workers, decode=self.decoder,
                                       run=run_dir, progress=False, threshold=4.0))
        windows = read_metrics(result.run_dir, "step")[1:]
        return sum(r["img_per_s"] for r in windows) / len(windows)


if __name__ == "__main__":
    main()

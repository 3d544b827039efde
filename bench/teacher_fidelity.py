"""The teacher's fidelity on the student's views, on digits with the demo's weak models: no training
beyond the weak models. (The training half of the old teacher study, which teacher the student learns
best from, is the study `teacher`: `w2s-pipe study teacher`.)

    python bench/teacher_fidelity.py                # 3 seeds (about 9 min on 2 CPU cores)
    python bench/teacher_fidelity.py --seeds 1

For each seed's weak model (the demo's test_vit, labelling the 897 transfer digits), on the student's
views at several crop scales, how often the teacher's argmax on the view equals the store's centre-crop
argmax, and each one's accuracy against the ground truth; then, with the imagenet_mae recipe's mixup
0.8 / cutmix 1.0, how far a linear mix of labels (what a store can do: FKD's approximation) is from
the teacher's output on the mixed image: mean KL(online || linear) and how often their argmax differs,
for the linear mix of the teacher's outputs on the same unmixed views and for the linear mix of the
stored centre labels. Results go to bench/results/teacher_fidelity.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import _util

SCALES = (1.0, 0.6, 0.25, 0.08)  # fidelity's crop scales (1.0: aspect jitter only)
MIX = {"mixup": 0.8, "cutmix": 1.0}  # the imagenet_mae recipe's


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--passes", type=int, default=4, help="passes over the transfer split per crop scale")
    ap.add_argument("--out", default=None, help="the workspace [default: a temporary directory]")
    args = ap.parse_args()

    ws = study_workspace(args.out, "w2s-teacher-fidelity-")
    weak = {seed: weak_model(ws, seed) for seed in range(args.seeds)}
    results = {"workspace": ws, "seeds": args.seeds,
               "fidelity": [fidelity(ws, seed, w, args.passes) for seed, w in weak.items()]}
    print_fidelity(results["fidelity"])
    print(f"results: {_util.save('teacher_fidelity', results)}")


def study_workspace(out: str | None, prefix: str) -> str:
    """A study's workspace (`out`, or a new temporary directory) with the digits prepared in it once,
    W2S_DATA pointing there."""
    from w2s_pipe.stages.prepare import prepare_digits

    ws = out or tempfile.mkdtemp(prefix=prefix)
    os.environ["W2S_DATA"] = os.path.join(ws, "data")
    if not os.path.exists(os.path.join(ws, "data", "digits", "manifest.json")):
        prepare_digits(os.path.join(ws, "data", "digits"))
    return ws


def recipe() -> dict:
    from w2s_pipe.pipeline.train.recipes import load_recipe
    from w2s_pipe.stages.train_config import recipe_options

    return {**load_recipe("demo", recipe_options()), "config": "demo", "progress": False}


def open_store(url):
    from w2s_pipe.storage import open_store as open_

    return open_(url)


def weak_model(ws: str, seed: int) -> dict:
    """The demo's weak model of `seed` and its centre store, made once per workspace."""
    from w2s_pipe.pipeline.train.runs import read_metrics
    from w2s_pipe.stages.label import LabelConfig, run_label
    from w2s_pipe.stages.train import TrainConfig, run_train

    run_dir, store = os.path.join(ws, "runs", f"s{seed}-weak"), os.path.join(ws, "stores", f"digits-transfer-s{seed}")
    if not os.path.exists(os.path.join(run_dir, "last.pt")):
        run_train(TrainConfig(**recipe(), run=run_dir, strong="test_vit", img_size=32, epochs=10, loss="gt",
                              data="digits", split="weak", seed=seed, workspace=ws))
    started = time.perf_counter()
    result = run_label(LabelConfig(weak=None, weak_checkpoint=os.path.join(run_dir, "last.pt"), data="digits",
                                   labels=store, workers=0, precision="fp32", workspace=ws, progress=False))
    label_s = time.perf_counter() - started
    opened = open_store(store)
    records = read_metrics(run_dir)
    epochs = [r for r in records if r["kind"] == "epoch"]
    return {"checkpoint": os.path.join(run_dir, "last.pt"), "store": store, "top1": epochs[-1]["val_top1"],
            "label_s": None if result.already_complete else label_s,
            "bytes_per_sample": opened.size_bytes() / opened.num_samples}


def fidelity(ws: str, seed: int, weak: dict, passes: int) -> dict:
    import torch

    from w2s_pipe.pipeline.image.preprocess import data_config_for
    from w2s_pipe.pipeline.loaders.join import StoreJoin
    from w2s_pipe.pipeline.loaders.train_stream import TrainStream, train_loader
    from w2s_pipe.pipeline.models.build import create_model, load_model
    from w2s_pipe.pipeline.train.batch import StepInputs
    from w2s_pipe.pipeline.views.mixing import BatchMix, mix_weak
    from w2s_pipe.pipeline.views.params import TrainViews
    from w2s_pipe.pipeline.views.pixels import TrainAugment
    from w2s_pipe.pipeline.weak.teacher import OnlineTeacher
    from w2s_pipe.storage import open_store

    cpu = torch.device("cpu")
    student = data_config_for(create_model("resnet10t", 10), 24)
    teacher = OnlineTeacher(load_model(None, checkpoint=weak["checkpoint"], num_classes=10), student, cpu)
    store = open_store(weak["store"])
    urls, fields = [s["url"] for s in store.shards], tuple(store.attrs["data"]["image_field"].split(";"))
    batch_size, n = 64, store.num_samples
    out = {"seed": seed, "weak_top1": weak["top1"], "scales": {}}
    for scale in SCALES:
        views = TrainViews(seed, scale=(scale, 1.0), hflip=0.0, size=(24, 24))
        stream = TrainStream(urls, augment=TrainAugment(student, views, "cpu"), image_fields=fields,
                             label_field="cls", need_labels=True, join=StoreJoin(weak["store"]), seed=seed,
                             batch_size=batch_size, shuffle_buffer=256)
        prepare = StepInputs(student, cpu, decoder="cpu", rank=0, need_labels=True)
        mixer = BatchMix(**MIX, prob=1.0, switch_prob=0.5, smoothing=0.0, num_classes=10, seed=seed)
        sums = dict(views=0, agree_center=0, view_right=0, center_right=0, mixed=0, kl_views=0.0, kl_center=0.0,
                    flip_views=0, flip_center=0, mixed_right_online=0, mixed_right_center=0)
        batches = iter(train_loader(stream, 0, False))
        for step in range(-(-passes * n // batch_size)):
            batch = prepare(next(batches), step=step)
            labels, center = batch["target"], batch["weak"].float()
            with torch.inference_mode():
                on_view = teacher(batch["image"])
            sums["views"] += len(labels)
            sums["agree_center"] += int((on_view.argmax(1) == center.argmax(1)).sum())
            sums["view_right"] += int((on_view.argmax(1) == labels).sum())
            sums["center_right"] += int((center.argmax(1) == labels).sum())
            mixed, _, mixed_center, lam = mixer(batch["image"].clone(), None, center, rank=0, step=step)
            online = torch.log_softmax(teacher(mixed), dim=1)
            for name, linear in (("views", mix_weak(on_view, lam)), ("center", mixed_center)):
                kl = (online.exp() * (online - torch.log_softmax(linear, dim=1))).sum(1)
                sums[f"kl_{name}"] += float(kl.sum())
                sums[f"flip_{name}"] += int((online.argmax(1) != linear.argmax(1)).sum())
            sums["mixed"] += len(labels)
            # the label a mixed image "is": its larger share's class (lam >= 0.5: its own)
            main = labels if lam >= 0.5 else labels.flip(0)
            sums["mixed_right_online"] += int((online.argmax(1) == main).sum())
            sums["mixed_right_center"] += int((mixed_center.argmax(1) == main).sum())
        v, m = sums["views"], sums["mixed"]
        out["scales"][str(scale)] = {
            "views": v, "teacher_agrees_with_center": sums["agree_center"] / v,
            "teacher_acc_on_views": sums["view_right"] / v, "center_acc": sums["center_right"] / v,
            "mix_kl_linear_views": sums["kl_views"] / m, "mix_argmax_differs_linear_views": sums["flip_views"] / m,
            "mix_kl_center_store": sums["kl_center"] / m, "mix_argmax_differs_center_store": sums["flip_center"] / m,
            "mixed_acc_online": sums["mixed_right_online"] / m, "mixed_acc_center_store": sums["mixed_right_center"] / m}
    return out


def print_fidelity(rows: list[dict]) -> None:
    print("\nfidelity: mean over seeds (the weak model's own top-1 on val: "
          f"{statistics.mean(r['weak_top1'] for r in rows):.3f})")
    keys = ["teacher_agrees_with_center", "teacher_acc_on_views", "center_acc", "mix_kl_linear_views",
            "mix_argmax_differs_linear_views", "mix_kl_center_store", "mix_argmax_differs_center_store",
            "mixed_acc_online", "mixed_acc_center_store"]
    print("| crop scale | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for scale in rows[0]["scales"]:
        cells = [f"{statistics.mean(r['scales'][scale][k] for r in rows):.3f}" for k in keys]
        print(f"| ({scale}, 1) | " + " | ".join(cells) + " |")



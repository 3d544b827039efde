"""Per-view stores (`label --views K`): the weak model's output on the very views `train` draws,
stored in the shard-aligned layout and replayed by `train` (pass p: view p mod K).

Device: the CPU, fp32 (stated: the equalities below are exact there)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest import resume_against_whole, same_weights
from launch import torchrun

from w2s_pipe.errors import W2SError
from w2s_pipe.pipeline.train.runs import read_metrics
from w2s_pipe.pipeline.views.params import TrainViews
from w2s_pipe.stages.label import LabelConfig, run_label
from w2s_pipe.stages.train import TrainConfig, run_train
from w2s_pipe.storage import open_store, schema

K = 3
RECIPE = dict(seed=7, crop_scale=0.5, hflip=0.5)


@pytest.fixture
def views_store(tmp_path, digits_data, weak_ckpt):
    return run_label(LabelConfig.tiny(weak_checkpoint=weak_ckpt, labels=str(tmp_path / "views"), views=K,
                                      batch_size=100, **RECIPE)).store


def test_a_per_view_store_holds_the_views_train_draws_and_the_weak_models_output_on_them(views_store, weak_ckpt):
    from w2s_pipe.pipeline.image.decode import decode_tensor
    from w2s_pipe.pipeline.image.preprocess import DeviceNormalize
    from w2s_pipe.pipeline.models.build import load_model
    from w2s_pipe.pipeline.sources.shards import iter_samples
    from w2s_pipe.pipeline.views.pixels import LabelViews, TrainAugment

    store = open_store(views_store)
    assert store.views == K and store.attrs["schema_version"] == schema.SCHEMA_VERSION
    assert store.attrs["views"]["seed"] == 7 and store.attrs["views"]["recipe"]["crop_scale"] == 0.5
    assert store.attrs["views"]["fingerprint"]["input_size"] == [3, 32, 32]
    store.check_rows()  # every array under the markers' sha256
    rows = store.shard_rows(1)
    assert rows.arrays["views/logits"].shape == (len(rows.keys), K, 10)
    loaded = load_model(None, checkpoint=weak_ckpt, num_classes=10)
    model, normalize = loaded.model.eval(), DeviceNormalize(loaded.data_config, torch.device("cpu"))
    views = TrainViews(7, scale=(0.5, 1.0), hflip=0.5, size=(32, 32))
    samples = {s["__key__"]: s for s in iter_samples(store.shards[1]["url"])}
    flips = 0
    for j in (0, 5, 77):
        key = rows.keys[j]
        image = decode_tensor(samples[key]["png"], "x")
        for p in range(K):  # the box and flip train draws in pass p
            v = views.draw(store.shards[1]["name"], key, p, *image.shape[-2:])
            assert rows.arrays["views/crop"][j, p].tolist() == [v.top, v.left, v.height, v.width]
            assert rows.arrays["views/flip"][j, p] == v.flip
            flips += v.flip
        crops, _, _ = LabelViews(TrainAugment(loaded.data_config, views, "cpu"), K)(image, store.shards[1]["name"], key)
        with torch.no_grad():
            live = model(normalize(crops)).numpy()
        np.testing.assert_allclose(rows.arrays["views/logits"][j].astype(np.float32), live, rtol=1e-3, atol=1e-3)
        assert rows.arrays["views/pred"][j].tolist() == rows.arrays["views/logits"][j].astype(np.float32).argmax(1).tolist()
    assert 0 < flips < 9  # both kinds drawn


def test_the_centre_view_of_a_per_view_store_is_the_centre_stores(views_store, tmp_path, weak_ckpt):
    centre = open_store(run_label(LabelConfig.tiny(weak_checkpoint=weak_ckpt, labels=str(tmp_path / "c"),
                                                   batch_size=100)).store)
    both = open_store(views_store)
    assert centre.index().column("key").equals(both.index().column("key"))
    a, b = centre.shard_rows(0).arrays["logits"], both.shard_rows(0).arrays["logits"]
    np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), atol=2e-3)  # one forward with the views


def test_verify_replays_the_views_and_inspect_reports_them(views_store):
    from w2s_pipe.stages.inspect import store_statistics
    from w2s_pipe.stages.verify import VerifyConfig, run_verify

    report = run_verify(VerifyConfig(views_store, recompute=12, device="cpu"))
    assert report.ok, report.problems
    replayed = [name for name, _ in report.checks if name.startswith("recomputed 12 samples")][0]
    assert f"their {12 * K} views replayed: top-1 agreement 1.000" in replayed
    stats = store_statistics(views_store)
    store = open_store(views_store)
    pred = np.concatenate([store.shard_rows(i).arrays["pred"] for i in range(len(store.shards))])
    views = np.concatenate([store.shard_rows(i).arrays["views/pred"] for i in range(len(store.shards))])
    labels = store.index().column("label").to_numpy()
    np.testing.assert_allclose(stats["view_agreement_with_centre"], (views == pred[:, None]).mean(0))
    np.testing.assert_allclose(stats["view_accuracy"], (views == labels[:, None]).mean(0))
    # a damaged view: verify names it
    import zarr

    group = zarr.open_group(views_store, mode="r+")
    group["views/pred"][0, 1] = (int(group["views/pred"][0, 1]) + 1) % 10
    report = run_verify(VerifyConfig(views_store, check_data=False))
    assert not report.ok and any("a view's pred is not its argmax" in p for p in report.problems)


def test_train_replays_view_p_mod_k(views_store):
    """Over 4 passes of 2 shards' samples the stream trains pass p on stored view p mod K: the same
    box and flip, and that view's stored logits."""
    from w2s_pipe.pipeline.loaders.join import StoreJoin
    from w2s_pipe.pipeline.loaders.train_stream import TrainStream
    from w2s_pipe.pipeline.views.pixels import TrainAugment

    store = open_store(views_store)
    config = {"input_size": [3, 24, 24], "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3}
    urls = [s["url"] for s in store.shards][2:]  # 256 + 129 samples
    stream = TrainStream(urls, augment=TrainAugment(config, TrainViews(7, scale=(0.5, 1.0), hflip=0.5, size=(24, 24)),
                                                    "cpu"), image_fields=("png",), label_field="cls", need_labels=False,
                         join=StoreJoin(views_store, views=True), seed=0, batch_size=1, shuffle_buffer=16,
                         view_passes=K)
    rows = {store.shards[i]["name"]: store.shard_rows(i) for i in (2, 3)}
    seen = set()
    for n, sample in enumerate(stream):
        if n == 4 * 385:
            break
        shard, key, p = sample["key"]
        r = rows[shard]
        j = r.keys.index(key)
        assert np.array_equal(sample["weak"], r.arrays["views/logits"][j, p % K])
        assert [int(v) for v in sample["view"][:5]] == [*r.arrays["views/crop"][j, p % K], r.arrays["views/flip"][j, p % K]]
        seen.add(p)
    assert {0, 1, 2, 3} <= seen  # pass 3 replays view 0 (the shuffle buffer reaches into pass 4)
    # drawn with another seed, the boxes are not the stored ones: a one-line error, never other pixels' labels
    other = TrainStream(urls, augment=TrainAugment(config, TrainViews(8, scale=(0.5, 1.0), size=(24, 24)), "cpu"),
                        image_fields=("png",), label_field="cls", need_labels=False,
                        join=StoreJoin(views_store, views=True), seed=0, batch_size=1, view_passes=K)
    from w2s_pipe.pipeline.loaders.shard_batches import LoadFailed

    failed = next(s for s in other if isinstance(s, LoadFailed))  # passed on as data, said by the main process
    assert "view" in failed.message and "of the store is (top, left, height, width, flip)" in failed.message


@pytest.mark.parametrize("options,match", [
    (dict(crop_scale=0.6), r"--crop-scale 0.6: store .* views drawn with --crop-scale 0.5"),
    (dict(seed=8), r"--seed 8: store .* --seed 7"),
    (dict(hflip=0.0), r"--hflip 0.0: .* --hflip 0.5"),
    (dict(aa="rand-m9-mstd0.5-inc1"), r"--aa rand-m9-mstd0.5-inc1: store .* drawn with --aa None"),
    (dict(reprob=0.25), r"--reprob 0.25: store .* drawn with --reprob 0.0"),
    (dict(mixup=0.8), r"--mixup 0.8: store .* drawn with --mixup 0.0"),
])
def test_a_replay_that_would_move_the_pixels_is_refused_by_name(views_store, options, match):
    base = {**RECIPE, "labels": views_store, "device": "cpu"}
    with pytest.raises(W2SError, match=match):
        run_train(TrainConfig.tiny(**{**base, **options}, run="refused"))


def test_replay_trains_resumes_exactly_and_the_centre_view_stays_readable(views_store, tmp_path):
    options = dict(**RECIPE, labels=views_store, epochs=2, steps_per_epoch=4, device="cpu", log_every=1)
    whole, split = resume_against_whole(3, **options)
    assert split.finished and same_weights(whole.run_dir, split.run_dir)
    import json

    assert json.load(open(os.path.join(whole.run_dir, "config.json")))["data_source"]["views"] == K
    centre = run_train(TrainConfig.tiny(run="centre", store_view="center", **{**options, "crop_scale": 0.08}))
    assert centre.finished and "views" not in json.load(open(os.path.join(centre.run_dir, "config.json")))["data_source"]
    assert not same_weights(whole.run_dir, centre.run_dir)
    # report: replayed runs are rows of their own, apart from the centre view's
    from w2s_pipe.stages.report import ReportConfig, run_report

    labels = {row["label"] for row in run_report(ReportConfig(plots=False))["rows"]}
    assert f"test_resnet from test_resnet ({K} stored views): adaptconf" in labels
    assert "test_resnet from test_resnet: adaptconf" in labels


def test_views_with_randaugment_replay_their_policy(tmp_path, digits_data, weak_ckpt):
    """--aa is part of a view's recipe: the store holds the weak model's output on the augmented
    views (verify draws them again, policy included), and a run with the same --aa replays them."""
    from w2s_pipe.stages.verify import VerifyConfig, run_verify

    aa = "rand-m9-mstd0.5-inc1"
    store = run_label(LabelConfig.tiny(weak_checkpoint=weak_ckpt, labels=str(tmp_path / "aa"), views=2, aa=aa,
                                       **RECIPE)).store
    plain = open_store(run_label(LabelConfig.tiny(weak_checkpoint=weak_ckpt, labels=str(tmp_path / "plain"), views=2,
                                                  **RECIPE)).store)
    assert not np.array_equal(open_store(store).shard_rows(0).arrays["views/logits"],
                              plain.shard_rows(0).arrays["views/logits"])  # same boxes, other pixels
    assert np.array_equal(open_store(store).shard_rows(0).arrays["views/crop"], plain.shard_rows(0).arrays["views/crop"])
    assert run_verify(VerifyConfig(store, recompute=6, device="cpu", check_data=False)).ok
    run = run_train(TrainConfig.tiny(**RECIPE, labels=store, aa=aa, epochs=1, steps_per_epoch=2, device="cpu", run="aa"))
    assert run.finished
    with pytest.raises(W2SError, match="--aa None: store .* drawn with --aa rand-m9-mstd0.5-inc1"):
        run_train(TrainConfig.tiny(**RECIPE, labels=store, epochs=1, steps_per_epoch=2, device="cpu", run="no-aa"))
    with pytest.raises(W2SError, match="--aa, --color-jitter and --reprob shape the training views: give --views K"):
        LabelConfig.tiny(weak_checkpoint=weak_ckpt, aa=aa)


def test_replay_asks_for_a_per_view_store(workspace_store):
    with pytest.raises(W2SError, match="--store-view replay: store .* holds the centre view only"):
        run_train(TrainConfig.tiny(store_view="replay", run="r", device="cpu"))


def test_one_process_and_two_ranks_with_other_batches_and_workers_label_the_same_views(tmp_path, digits_data, weak_ckpt):
    base = ["label", "--weak-checkpoint", weak_ckpt, "--quiet", "--device", "cpu", "--precision", "fp32", "--views", "2",
            "--seed", "3", "--crop-scale", "0.4"]
    runs = {"one": (1, ["--workers", "0", "--batch-size", "100"]), "two": (2, ["--workers", "1", "--batch-size", "37"])}
    for name, (nproc, extra) in runs.items():
        out = torchrun([*base, *extra, "--labels", str(tmp_path / name)], nproc=nproc)
        assert out.returncode == 0, out.stderr[-3000:]
    a, b = open_store(str(tmp_path / "one")), open_store(str(tmp_path / "two"))
    assert a.views == b.views == 2 and a.index().equals(b.index())
    for name, values in a.dask_arrays().items():
        np.testing.assert_array_equal(b.dask_arrays()[name].compute(), values.compute(), err_msg=name)


def test_version_1_stores_still_read(workspace_store):
    import zarr

    zarr.open_group(workspace_store, mode="r+").attrs["schema_version"] = 1
    store = open_store(workspace_store)
    assert store.views == 0 and store.num_samples == 897


def test_views_option_checks():
    with pytest.raises(W2SError, match="--views -1 is invalid"):
        LabelConfig.tiny(weak_checkpoint="w.pt", views=-1)
    from w2s_pipe.stages.label import label_decoder

    with pytest.raises(W2SError, match="--views is applied in the loading processes: use --decode cpu or pil"):
        label_decoder("gpu", torch.device("cuda"), {}, None, "s", views=2)
    assert label_decoder("auto", torch.device("cuda"), {}, None, "s", views=2) == "cpu"


def test_replay_under_torchrun_ends_with_equal_weights(views_store, tmp_path):
    cmd = ["train", "--strong", "test_resnet", "--img-size", "32", "--batch-size", "16", "--epochs", "1",
           "--steps-per-epoch", "3", "--workers", "1", "--precision", "fp32", "--quiet", "--device", "cpu",
           "--labels", views_store, "--seed", "7", "--crop-scale", "0.5", "--hflip", "0.5", "--run-name", "ddp"]
    out = torchrun(cmd)
    assert out.returncode == 0, out.stderr[-3000:]
    end = read_metrics(tmp_path / "ws" / "runs" / "ddp", "end")[0]
    assert len(end["weights_sha256"]) == 2 and end["weights_sha256"][0] == end["weights_sha256"][1]


MIX = dict(mixup=0.8, cutmix=1.0)


@pytest.fixture
def mixed_store(tmp_path, digits_data, weak_ckpt):
    return run_label(LabelConfig.tiny(weak_checkpoint=weak_ckpt, labels=str(tmp_path / "mixed"), views=2, **RECIPE,
                                      **MIX)).store


def test_mixed_views_hold_the_weak_models_output_on_the_mixed_image(mixed_store, weak_ckpt):
    """Each stored mixed view is the teacher on the very mix train replays: the sample's view and its
    partner's (both of that pass), mixed by the plan drawn from (seed, shard, key, pass, position)."""
    from w2s_pipe.pipeline.image.decode import decode_tensor
    from w2s_pipe.pipeline.image.preprocess import DeviceNormalize
    from w2s_pipe.pipeline.models.build import load_model
    from w2s_pipe.pipeline.sources.shards import iter_samples
    from w2s_pipe.pipeline.views.mixing import MixRecipe, mix_pixels, plan
    from w2s_pipe.pipeline.views.pixels import TrainAugment
    from w2s_pipe.stages.verify import VerifyConfig, run_verify

    store = open_store(mixed_store)
    assert store.views_mixed and store.attrs["views"]["recipe"]["cutmix"] == 1.0
    loaded = load_model(None, checkpoint=weak_ckpt, num_classes=10)
    model, normalize = loaded.model.eval(), DeviceNormalize(loaded.data_config, torch.device("cpu"))
    augment = TrainAugment(loaded.data_config, TrainViews(7, scale=(0.5, 1.0), hflip=0.5, size=(32, 32)), "cpu")
    shard, rows = store.shards[2]["name"], store.shard_rows(2)
    samples = list(iter_samples(store.shards[2]["url"]))
    kinds = set()
    for j in range(12):
        for p in range(2):
            mix = plan(MixRecipe(**MIX), 7, shard, rows.keys[j], p, j, len(samples))
            assert rows.arrays["views/partner"][j, p] == mix.partner
            assert rows.arrays["views/lam"][j, p] == pytest.approx(mix.lam)
            own, _ = augment.view_of(decode_tensor(samples[j]["png"], "x"), shard, rows.keys[j], p)
            other = own
            if mix.partner >= 0:
                partner = samples[mix.partner]
                other, _ = augment.view_of(decode_tensor(partner["png"], "x"), shard, partner["__key__"], p)
                kinds.add("cutmix" if mix.cutmix else "mixup")
            x = mix_pixels(normalize(own[None]), normalize(other[None]), torch.tensor([mix.row(32, 32)]))
            with torch.no_grad():
                live = model(x).numpy()[0]
            np.testing.assert_allclose(rows.arrays["views/logits"][j, p].astype(np.float32), live, rtol=1e-3, atol=1e-3)
    assert kinds == {"mixup", "cutmix"}
    assert run_verify(VerifyConfig(mixed_store, recompute=8, device="cpu", check_data=False)).ok


def test_train_replays_each_views_mix_and_resumes_exactly(mixed_store):
    from w2s_pipe.pipeline.loaders.join import StoreJoin
    from w2s_pipe.pipeline.loaders.train_stream import TrainStream
    from w2s_pipe.pipeline.views.mixing import MixRecipe, plan
    from w2s_pipe.pipeline.views.pixels import TrainAugment

    store = open_store(mixed_store)
    config = {"input_size": [3, 24, 24], "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3}
    augment = TrainAugment(config, TrainViews(7, scale=(0.5, 1.0), hflip=0.5, size=(24, 24)), "cpu")
    urls = [s["url"] for s in store.shards][3:]  # 129 samples
    stream = TrainStream(urls, augment=augment, image_fields=("png",), label_field="cls", need_labels=True,
                         join=StoreJoin(mixed_store, views=True), seed=0, batch_size=1, shuffle_buffer=8,
                         view_passes=2, mix=MixRecipe(**MIX))
    rows, shard = store.shard_rows(3), store.shards[3]["name"]
    labels = rows.labels
    for n, sample in zip(range(300), stream):
        _, key, p = sample["key"]
        j = rows.keys.index(key)
        mix = plan(MixRecipe(**MIX), 7, shard, key, p % 2, j, len(rows.keys))
        assert sample["mix"] == mix.row(24, 24)
        assert sample["partner_label"] == (labels[mix.partner] if mix.partner >= 0 else labels[j])
        assert np.array_equal(sample["weak"], rows.arrays["views/logits"][j, p % 2])
    options = dict(**RECIPE, **MIX, labels=mixed_store, epochs=2, steps_per_epoch=3, gt_weight=1.0, smoothing=0.1,
                   device="cpu", log_every=1)
    whole, split = resume_against_whole(2, **options)
    assert split.finished and same_weights(whole.run_dir, split.run_dir)
    with pytest.raises(W2SError, match=r"--cutmix 0.0: store .* drawn with --cutmix 1.0"):
        run_train(TrainConfig.tiny(run="other", **{**options, "cutmix": 0.0}))
    with pytest.raises(W2SError, match="--mixup 0.0: store"):
        run_train(TrainConfig.tiny(run="none", **{**options, "mixup": 0.0, "cutmix": 0.0}))
    with pytest.raises(W2SError, match="--skip-missing: store .* partners found by their position"):
        run_train(TrainConfig.tiny(run="skip", skip_missing=True, **options))
    with pytest.raises(W2SError, match=r"--mixup-prob 0.5: store .* drawn with --mixup-prob 1.0"):
        run_train(TrainConfig.tiny(run="half", **{**options, "mixup_prob": 0.5}))


@pytest.mark.parametrize("mix", [{}, MIX], ids=["erased", "erased-and-mixed"])
def test_erased_views_are_the_pixels_train_replays(tmp_path, digits_data, weak_ckpt, mix):
    """--reprob in the view recipe: train's replayed batch (the view's erasing box and noise, and a
    mixed view's partner erased in its own view) is the very pixels the weak model was run on, so
    the stored logits are the weak model's on train's pixels; verify --recompute replays them."""
    from w2s_pipe.pipeline.loaders.join import StoreJoin
    from w2s_pipe.pipeline.loaders.train_stream import TrainStream, collate
    from w2s_pipe.pipeline.models.build import load_model
    from w2s_pipe.pipeline.train.batch import StepInputs
    from w2s_pipe.pipeline.views.mixing import MixRecipe
    from w2s_pipe.pipeline.views.pixels import TrainAugment
    from w2s_pipe.stages.verify import VerifyConfig, run_verify

    store = run_label(LabelConfig.tiny(weak_checkpoint=weak_ckpt, labels=str(tmp_path / "erased"), views=2, reprob=1.0,
                                       **RECIPE, **mix)).store
    assert open_store(store).attrs["views"]["recipe"]["reprob"] == 1.0
    loaded = load_model(None, checkpoint=weak_ckpt, num_classes=10)
    model, config = loaded.model.eval(), loaded.data_config  # the student at the teacher's size: the same pixels
    views = TrainViews(7, scale=(0.5, 1.0), hflip=0.5, reprob=1.0, size=(32, 32))
    stream = TrainStream([s["url"] for s in open_store(store).shards][1:2], augment=TrainAugment(config, views, "cpu"),
                         image_fields=("png",), label_field="cls", need_labels=False,
                         join=StoreJoin(store, views=True), seed=0, batch_size=16, shuffle_buffer=4, view_passes=2,
                         mix=MixRecipe(**mix) if mix else None)
    batch = collate([s for _, s in zip(range(16), stream)])
    assert (batch["view"][:, 10] > 0).float().mean() > 0.5  # erase_height: most views erased
    stored = batch["weak"].float()

    def teacher_on(reprob):
        prepare = StepInputs(config, torch.device("cpu"), decoder="cpu", rank=0, need_labels=False, reprob=reprob)
        with torch.no_grad():
            return model(prepare({k: (v.clone() if torch.is_tensor(v) else v) for k, v in batch.items()},
                                 step=1)["image"])

    torch.testing.assert_close(teacher_on(1.0), stored, rtol=2e-3, atol=2e-3)  # float16 storage
    assert (teacher_on(0.0) - stored).abs().max() > 0.05  # the erasing is in what the teacher saw
    assert run_verify(VerifyConfig(store, recompute=8, device="cpu", check_data=False)).ok


def test_mixed_views_are_labelled_only_without_skipping():
    with pytest.raises(W2SError, match="mixed views pair each sample with another of its shard by position"):
        LabelConfig.tiny(weak_checkpoint="w.pt", views=2, mixup=0.8, on_bad_sample="skip")
    with pytest.raises(W2SError, match="--mixup and --cutmix mix the training views: give --views K"):
        LabelConfig.tiny(weak_checkpoint="w.pt", mixup=0.8)


def test_a_recipe_recorded_before_an_option_existed_is_the_same_job_at_its_default():
    from w2s_pipe.pipeline.config.groups import RECIPE_DEFAULTS
    from w2s_pipe.storage.writer import identity_mismatch

    old = {"views": {"k": 2, "seed": 0, "recipe": {"crop_scale": 0.6, "ratio": [0.75, 4 / 3], "hflip": 0.0}}}
    same = {"views": {"k": 2, "seed": 0, "recipe": {**RECIPE_DEFAULTS, **old["views"]["recipe"]}}}
    assert identity_mismatch(old, same) is None
    mixed = {"views": {"k": 2, "seed": 0, "recipe": {**same["views"]["recipe"], "mixup": 0.8}}}
    assert "views is" in identity_mismatch(old, mixed)

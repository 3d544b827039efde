"""Stage one end to end on real digits shards with a real (tiny) timm model and checkpoint."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from conftest import make_checkpoint

from w2s_pipe.errors import W2SError
from w2s_pipe.pipeline.image.decode import decode_image
from w2s_pipe.pipeline.image.preprocess import eval_transform
from w2s_pipe.pipeline.models.build import load_model
from w2s_pipe.pipeline.sources.shards import iter_samples
from w2s_pipe.stages.label import LabelConfig, run_label
from w2s_pipe.storage import open_store


def label(tmp_path, ckpt, name="store", **kw):
    kw.setdefault("workers", 0)
    kw.setdefault("precision", "fp32")
    cfg = LabelConfig(weak=None, weak_checkpoint=ckpt, data="digits", labels=str(tmp_path / name), batch_size=100,
                      progress=False, **kw)
    return run_label(cfg)


def direct_forward(ckpt, urls):
    """The weak model applied by hand, in float32, to the same preprocessed images."""
    loaded = load_model(None, checkpoint=ckpt, num_classes=10)
    transform = eval_transform(loaded.data_config)
    keys, images, labels = [], [], []
    for url in urls:
        for s in iter_samples(url):
            keys.append(s["__key__"])
            images.append(transform(decode_image(s, ("png",), url)))
            labels.append(int(s["cls"]))
    with torch.no_grad():
        logits = loaded.model.eval()(torch.stack(images)).numpy()
    return keys, logits, np.array(labels)


def read_all(store):
    return {name: np.asarray(a.compute()) for name, a in store.dask_arrays().items()}


def test_stored_logits_equal_a_direct_forward(tmp_path, digits_data, weak_ckpt):
    result = label(tmp_path, weak_ckpt, decode="pil")  # timm's own eval transform, to the pixel
    assert result.complete and result.samples == 897 and result.shards == 4
    store = open_store(result.store)
    keys, logits, labels = direct_forward(weak_ckpt, [s["url"] for s in store.shards])
    index = store.index()
    # Every key exactly once, in shard order.
    assert index.column("key").to_pylist() == keys and len(set(keys)) == 897
    arrays = read_all(store)
    np.testing.assert_allclose(arrays["logits"].astype(np.float32), logits, rtol=1e-3, atol=1e-3)
    # The index agrees with the arrays, row by row, and with the ground truth in the shards.
    for name in ("pred", "confidence", "margin", "entropy"):
        np.testing.assert_array_equal(index.column(name).to_numpy(), arrays[name])
    np.testing.assert_array_equal(arrays["pred"], arrays["logits"].astype(np.float32).argmax(1))
    np.testing.assert_array_equal(index.column("label").to_numpy(), labels)
    rows = index.column("row").to_numpy()
    np.testing.assert_array_equal(store.group["pred"][:][rows], arrays["pred"])
    # The store records what made it.
    attrs = store.attrs
    assert attrs["weak"]["model"] == "test_resnet" and len(attrs["weak"]["checkpoint_sha256"]) == 64
    assert attrs["preprocessing"]["input_size"] == [3, 32, 32] and attrs["precision"] == "fp32"
    assert [s["count"] for s in attrs["data"]["shards"]] == [256, 256, 256, 129]
    assert attrs["class_names"] == [str(d) for d in range(10)]


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, digits_data, weak_ckpt):
    whole = open_store(label(tmp_path, weak_ckpt, "whole").store)
    first = label(tmp_path, weak_ckpt, "parts", max_shards=1)
    assert not first.complete and first.shards == 1
    partial = open_store(first.store)
    assert len(partial.missing_shards()) == 3
    with pytest.raises(W2SError, match="incomplete: 3 of 4 shards unlabelled"):
        partial.index()
    second = label(tmp_path, weak_ckpt, "parts", max_shards=2)
    assert second.shards == 2 and not second.complete
    last = label(tmp_path, weak_ckpt, "parts")
    assert last.complete and last.shards == 1 and last.samples == 129  # only what was missing
    again = label(tmp_path, weak_ckpt, "parts")
    assert again.complete and again.shards == 0 and again.samples == 0
    resumed = open_store(last.store)
    assert resumed.index().equals(whole.index())
    for name, values in read_all(whole).items():
        np.testing.assert_array_equal(read_all(resumed)[name], values)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_workers_and_batch_size_do_not_change_the_store(tmp_path, digits_data, weak_ckpt, device):
    """Exact on the CPU. On a GPU the kernels chosen depend on the batch size (and fp32 convolutions
    run in TF32), so the logits agree to 1% of their range and the predictions almost everywhere."""
    a = open_store(label(tmp_path, weak_ckpt, "a", workers=0, device=device).store)
    b = open_store(run_label(LabelConfig(weak=None, weak_checkpoint=weak_ckpt, data="digits", labels=str(tmp_path / "b"),
                                         batch_size=37, workers=2, precision="fp32", device=device,
                                         progress=False)).store)
    if device == "cpu":
        assert a.index().equals(b.index())
        np.testing.assert_array_equal(read_all(a)["logits"], read_all(b)["logits"])
        return
    assert a.index().column("key").equals(b.index().column("key"))
    la, lb = read_all(a)["logits"].astype(np.float32), read_all(b)["logits"].astype(np.float32)
    assert np.abs(la - lb).max() <= 0.01 * (la.max() - la.min())
    assert (la.argmax(1) == lb.argmax(1)).mean() >= 0.99


def test_topk_store(tmp_path, digits_data, weak_ckpt):
    full = read_all(open_store(label(tmp_path, weak_ckpt, "full").store))
    top = open_store(label(tmp_path, weak_ckpt, "top", topk=3).store)
    assert top.topk == 3 and "logits" not in top.group
    arrays = read_all(top)
    values, indices = torch.tensor(full["logits"].astype(np.float32)).topk(3, 1)
    np.testing.assert_array_equal(arrays["topk_values"].astype(np.float32), values.numpy())
    np.testing.assert_array_equal(arrays["topk_indices"], indices.numpy())
    np.testing.assert_array_equal(arrays["pred"], full["pred"])


def test_bf16_is_close_to_fp32(tmp_path, digits_data, weak_ckpt):
    fp32 = read_all(open_store(label(tmp_path, weak_ckpt, "fp32", precision="fp32").store))
    bf16_store = open_store(label(tmp_path, weak_ckpt, "bf16", precision="bf16").store)
    assert bf16_store.attrs["precision"] == "bf16"
    bf16 = read_all(bf16_store)
    scale = np.abs(fp32["logits"].astype(np.float32)).max()
    assert np.abs(bf16["logits"].astype(np.float32) - fp32["logits"].astype(np.float32)).max() < 0.05 * scale
    assert (bf16["pred"] == fp32["pred"]).mean() > 0.9


def test_non_finite_logits_are_never_stored(tmp_path, digits_data):
    ckpt = make_checkpoint(tmp_path / "nan.pt", nan=True)
    with pytest.raises(W2SError, match=r"shard digits-transfer-000000.tar, key 'digits_\d+': .*not finite"):
        label(tmp_path, ckpt, "nan")
    store = open_store(str(tmp_path / "nan"))
    assert store.done_shards() == set()


def test_other_job_refused_unless_overwrite(tmp_path, digits_data, weak_ckpt):
    label(tmp_path, weak_ckpt, max_shards=1)
    other = make_checkpoint(tmp_path / "other.pt", seed=1)
    with pytest.raises(W2SError, match="weak.checkpoint_sha256 .* or --overwrite to replace it"):
        label(tmp_path, other)
    with pytest.raises(W2SError, match="precision"):
        label(tmp_path, weak_ckpt, precision="bf16")
    result = label(tmp_path, other, overwrite=True)
    assert result.complete and result.shards == 4


def test_decoders_agree_are_recorded_and_never_mixed(tmp_path, digits_data, weak_ckpt):
    pil = open_store(label(tmp_path, weak_ckpt, "pil", decode="pil").store)
    first = label(tmp_path, weak_ckpt, "cpu", max_shards=1)  # the default decoder
    with pytest.raises(W2SError, match=r'preprocessing is .*"decode": "cpu".* but .*"decode": "pil"'):
        label(tmp_path, weak_ckpt, "cpu", decode="pil")  # a store is finished with the decoder it began with
    cpu = open_store(label(tmp_path, weak_ckpt, "cpu").store)
    assert first.shards == 1 and cpu.attrs["preprocessing"]["decode"] == "cpu" and pil.attrs["preprocessing"]["decode"] == "pil"
    assert cpu.index().column("key").equals(pil.index().column("key"))
    a, b = read_all(pil), read_all(cpu)
    logits_a, logits_b = a["logits"].astype(np.float32), b["logits"].astype(np.float32)
    assert 0 < np.abs(logits_a - logits_b).max() < 0.02 * np.abs(logits_a).max()  # resize rounding only
    assert (a["pred"] == b["pred"]).mean() > 0.99


def test_gpu_decoding_needs_a_cuda_device(tmp_path, digits_data, weak_ckpt):
    with pytest.raises(W2SError, match="--decode gpu needs a CUDA device, and this run is on cpu; use --decode cpu"):
        label(tmp_path, weak_ckpt, decode="gpu", device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nvJPEG decoding needs a CUDA GPU; the CPU path is tested above")
def test_gpu_decoding_matches_cpu_decoding_and_skips_bad_jpegs(tmp_path, weak_ckpt):
    from test_decode import encode, picture

    from w2s_pipe.pipeline.sources.shards import write_shard

    (tmp_path / "j").mkdir()
    shard = [{"__key__": f"k{i:03d}", "jpg": encode(picture(i, (60, 45)), "JPEG", quality=90), "cls": i % 10}
             for i in range(40)]
    shard[7]["jpg"] = shard[7]["jpg"][:200]
    write_shard(str(tmp_path / "j" / "j-000000.tar"), shard)
    stores = {}
    for decode in ("cpu", "gpu"):
        result = run_label(LabelConfig(weak=None, weak_checkpoint=weak_ckpt, data=str(tmp_path / "j" / "j-*.tar"),
                                       num_classes=10, labels=str(tmp_path / decode), batch_size=16, workers=1,
                                       precision="fp32", decode=decode, on_bad_sample="skip", progress=False))
        assert result.complete and result.samples == 39 and result.skipped == 1
        stores[decode] = open_store(result.store)
    assert stores["gpu"].skipped_keys(0) == {"k007"} and stores["gpu"].attrs["preprocessing"]["decode"] == "gpu"
    cpu, gpu = read_all(stores["cpu"]), read_all(stores["gpu"])
    assert stores["cpu"].index().column("key").equals(stores["gpu"].index().column("key"))
    scale = np.abs(cpu["logits"].astype(np.float32)).max()
    assert np.abs(cpu["logits"].astype(np.float32) - gpu["logits"].astype(np.float32)).max() < 0.05 * scale


def test_default_store_lives_in_the_workspace(tmp_path, digits_data, weak_ckpt):
    result = run_label(LabelConfig(weak=None, weak_checkpoint=weak_ckpt, data="digits", workers=0, progress=False))
    assert result.store == str(tmp_path / "ws" / "stores" / "digits-transfer-test_resnet")
    assert isinstance(open_store(result.store).index(), pa.Table)


@pytest.mark.parametrize("field,value,match", [
    ("batch_size", 0, "--batch-size 0 is invalid"),
    ("precision", "fp8", "--precision 'fp8' is invalid"),
    ("topk", 0, "--topk 0 is invalid"),
    ("weak", None, "give --weak MODEL"),
    ("decode", "nvjpeg", "--decode 'nvjpeg' is invalid: choose one of auto, cpu, gpu, pil"),
])
def test_config_validation(field, value, match):
    kw = {"weak": "resnet18", "data": "digits", field: value}
    with pytest.raises(W2SError, match=match):
        LabelConfig(**kw)


def test_auto_decoder_finishes_a_store_with_the_decoder_it_began_with(tmp_path, digits_data, weak_ckpt):
    """--decode auto is cpu on a CPU machine, but a store begun with pil is finished with pil."""
    from w2s_pipe.stages.label import label_decoder

    assert label_decoder("auto", torch.device("cpu"), {}, None, "store") == "cpu"
    first = label(tmp_path, weak_ckpt, "p", decode="pil", max_shards=1)
    assert not first.complete
    rest = label(tmp_path, weak_ckpt, "p")  # decode left at auto
    assert rest.complete and open_store(rest.store).attrs["preprocessing"]["decode"] == "pil"
    assert open_store(label(tmp_path, weak_ckpt, "fresh").store).attrs["preprocessing"]["decode"] == "cpu"


def test_a_store_begun_on_a_gpu_asks_for_one(tmp_path, digits_data, weak_ckpt):
    """--decode auto keeps a store's decoder; a gpu store cannot be finished on this CPU machine,
    and the error says so rather than mixing decoders."""
    import zarr

    first = label(tmp_path, weak_ckpt, "g", max_shards=1)
    group = zarr.open_group(first.store, mode="r+")
    group.attrs.update({"preprocessing": {**group.attrs["preprocessing"], "decode": "gpu"}})
    with pytest.raises(W2SError, match="store .* was begun with --decode gpu, which needs a CUDA device"):
        label(tmp_path, weak_ckpt, "g", device="cpu")


def test_default_loading_processes_share_the_cores_between_ranks(monkeypatch):
    import os

    from w2s_pipe.pipeline.loaders.workers import default_workers

    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_workers() == 15  # no cap at 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert default_workers() == 3
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert default_workers() == 1


def test_store_names_and_the_way_out_of_a_decoder_clash(digits_data, weak_ckpt):
    """A literal pattern's default store is named after its manifest's data set (not "shards-<hash>");
    labelling the same data with another decoder offers another --labels, not only --overwrite."""
    import os

    from w2s_pipe.stages.label import LabelConfig, run_label

    pattern = str(digits_data / "digits-transfer-*.tar")
    first = run_label(LabelConfig(weak=None, weak_checkpoint=weak_ckpt, data=pattern, workers=0, precision="fp32",
                                  decode="cpu", progress=False))
    assert os.path.basename(first.store).startswith("digits-") and first.complete
    with pytest.raises(W2SError, match="give another --labels PATH to keep both, or --overwrite to replace it"):
        run_label(LabelConfig(weak=None, weak_checkpoint=weak_ckpt, data=pattern, workers=0, precision="fp32",
                              decode="pil", progress=False))

"""Bad data: each kind stops `label` with shard, key and reason, or with --on-bad-sample skip is
recorded in the store, counted, and known to `train`'s join as absent rather than missing."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from w2s_pipe.errors import W2SError
from w2s_pipe.pipeline.sources.shards import iter_samples, write_shard
from w2s_pipe.stages.label import LabelConfig, run_label
from w2s_pipe.stages.train import TrainConfig, run_train
from w2s_pipe.stages.verify import VerifyConfig, run_verify
from w2s_pipe.storage import open_store


def png(value=128):
    buf = io.BytesIO()
    Image.new("L", (8, 8), value).save(buf, format="PNG")
    return buf.getvalue()


def good(n, prefix):
    return [{"__key__": f"{prefix}{i:03d}", "png": png(i * 20 % 255), "cls": i % 10} for i in range(n)]


def jpeg():
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def bomb(width=100_000, height=100_000):
    """A small, valid PNG whose header declares width x height pixels (a decompression bomb: decoded,
    100,000 x 100,000 RGB is 30 GB)."""
    data = bytearray(png())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4: ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17: ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr: ihdr + 17])))
    return bytes(data)


BAD = {
    "zero-byte image": lambda: {"png": b"", "cls": 1},
    "decompression bomb": lambda: {"png": bomb(), "cls": 1},
    "truncated image": lambda: {"png": png()[:40], "cls": 1},
    "truncated jpeg": lambda: {"jpg": jpeg()[: len(jpeg()) // 2], "cls": 1},
    "non-image payload": lambda: {"png": b"this is not an image at all", "cls": 1},
    "no image field": lambda: {"cls": 1},
    "non-integer label": lambda: {"png": png(), "cls": b"seven"},
}


def write(directory, name, samples):
    directory.mkdir(exist_ok=True)
    return write_shard(str(directory / name), samples)


def label(tmp_path, ckpt, pattern, **kw):
    return run_label(LabelConfig(**{**dict(weak=None, weak_checkpoint=ckpt, data=pattern, num_classes=10, workers=0,
                                           labels=str(tmp_path / "store"), precision="fp32", progress=False), **kw}))


@pytest.mark.parametrize("kind", sorted(BAD))
def test_each_bad_sample_stops_the_run_with_shard_key_and_reason(tmp_path, weak_ckpt, kind):
    write(tmp_path / "d", "x-000000.tar", good(5, "a") + [{"__key__": "bad", **BAD[kind]()}] + good(5, "b"))
    with pytest.raises(W2SError, match=r"shard x-000000.tar, key 'bad': .*--on-bad-sample skip"):
        label(tmp_path, weak_ckpt, str(tmp_path / "d" / "x-*.tar"))


def test_repeated_key_empty_shard_and_truncated_tar_fail(tmp_path, weak_ckpt):
    write(tmp_path / "r", "x-000000.tar", good(3, "a") + good(2, "a"))
    with pytest.raises(W2SError, match="key 'a000': appears more than once"):
        label(tmp_path, weak_ckpt, str(tmp_path / "r" / "x-*.tar"))
    write(tmp_path / "e", "x-000000.tar", good(3, "a"))
    write(tmp_path / "e", "x-000001.tar", [])
    with pytest.raises(W2SError, match="x-000001.tar holds no samples"):
        label(tmp_path, weak_ckpt, str(tmp_path / "e" / "x-*.tar"))
    data = write(tmp_path / "t", "x-000000.tar", good(20, "a"))
    raw = open(data.url, "rb").read()
    open(data.url, "wb").write(raw[: len(raw) // 2])
    with pytest.raises(W2SError, match="x-000000.tar: cannot read it as a tar file"):
        label(tmp_path, weak_ckpt, str(tmp_path / "t" / "x-*.tar"))


def test_skip_records_everything_and_train_knows_it(tmp_path, weak_ckpt):
    d = tmp_path / "mixed"
    bad = [{"__key__": f"bad-{k.replace(' ', '-')}", **make()} for k, make in sorted(BAD.items())]
    write(d, "x-000000.tar", good(6, "a") + bad[:2] + good(6, "b") + [good(1, "b")[0]])  # b000 twice
    write(d, "x-000001.tar", good(5, "c") + bad[2:] + good(5, "d"))
    write(d, "x-000002.tar", [])
    truncated = write(d, "x-000003.tar", good(20, "e"))
    raw = open(truncated.url, "rb").read()
    open(truncated.url, "wb").write(raw[: len(raw) // 2])
    result = label(tmp_path, weak_ckpt, str(d / "x-*.tar"), on_bad_sample="skip")
    assert result.complete and result.skipped == len(BAD) + 1 + 2  # bad samples, a repeat, two whole shards
    store = open_store(result.store)
    assert store.num_samples == 12 + 10 and store.labelled_counts == [12, 10, 0, 0]
    rows = store.skipped().to_pylist()
    by_key = {r["key"]: r["reason"] for r in rows if r["key"]}
    whole = {r["shard"]: r["reason"] for r in rows if r["key"] is None}
    assert "cannot decode" in by_key["bad-non-image-payload"] and "cannot decode" in by_key["bad-truncated-image"]
    assert "cannot decode 'jpg'" in by_key["bad-truncated-jpeg"]
    assert "no image field" in by_key["bad-no-image-field"]
    assert "(an empty file: 0 bytes)" in by_key["bad-zero-byte-image"]
    assert "exceeds limit of 178956970 pixels: refused before decoding" in by_key["bad-decompression-bomb"]
    assert "not an integer" in by_key["bad-non-integer-label"]
    assert "more than once" in by_key["b000"]
    assert whole == {"x-000002.tar": "empty shard", "x-000003.tar": whole["x-000003.tar"]}
    assert "truncated" in whole["x-000003.tar"]
    index_keys = store.index().column("key").to_pylist()
    assert not any(k.startswith("bad") for k in index_keys) and index_keys.count("b000") == 1
    assert run_verify(VerifyConfig(store=result.store)).ok
    # Training reads the shards again; skipped samples are known to be absent, not missing.
    run = run_train(TrainConfig.tiny(labels=result.store, no_eval=True, run="t", epochs=1, batch_size=4))
    assert run.finished
    # The join gives each sample exactly its row: the repeat of b000 (a different image) is left out.
    from w2s_pipe.pipeline.loaders.join import StoreJoin

    joined = list(StoreJoin(result.store)(iter_samples(str(d / "x-000000.tar"))))
    assert [s["__key__"] for s in joined] == [f"a{i:03d}" for i in range(6)] + [f"b{i:03d}" for i in range(6)]
    rows = store.shard_rows("x-000000.tar")
    for s, logits in zip(joined, rows.arrays["logits"]):
        assert (s["weak"] == logits).all()


@pytest.mark.parametrize("decoder", ["cpu", "pil", "gpu"])
def test_a_declared_size_over_the_limit_is_refused_before_any_decoder(decoder, monkeypatch):
    """Every decode path reads the image through image_payload, which checks the header: PIL's and
    torchvision's CPU decoders, and under gpu the bytes the loading processes hand to nvJPEG (the
    check runs there, in the worker, so it needs no GPU here). A bomb and an image over a lowered
    limit are refused naming shard and key; one under it decodes."""
    from w2s_pipe.pipeline.image import decode
    from w2s_pipe.pipeline.image.preprocess import Preprocess

    prepare = Preprocess({"input_size": (3, 8, 8), "interpolation": "bilinear", "crop_pct": 1.0,
                          "mean": (0.5,) * 3, "std": (0.5,) * 3}, decoder)
    with pytest.raises(W2SError, match=r"shard s.tar, key 'k': cannot decode 'png' \(Image size \(10000000000 pixels\) "
                                       r"exceeds limit of 178956970 pixels: refused before decoding\)"):
        prepare.decode({"__key__": "k", "png": bomb()}, ("png",), "s.tar")
    monkeypatch.setenv(decode.LIMIT_ENV, "60")
    with pytest.raises(W2SError, match=r"key 'k': cannot decode 'png' \(its header declares 8 x 8 = 64 pixels, over the "
                                       r"limit of 60 \(--max-image-pixels\)"):
        prepare.decode({"__key__": "k", "png": png()}, ("png",), "s.tar")
    monkeypatch.setenv(decode.LIMIT_ENV, "64")
    assert prepare.decode({"__key__": "k", "png": png()}, ("png",), "s.tar") is not None


def test_max_image_pixels_reaches_the_loading_processes_of_label_and_train(tmp_path, weak_ckpt, monkeypatch):
    """--max-image-pixels is the limit in a loading process too (workers=1, a process of its own), for
    label and for train: 8 x 8 images pass 64 and are refused at 63, naming shard, key and the option;
    the limit of a later job in the same process is that job's, not the last one's."""
    from w2s_pipe.pipeline.image import decode

    monkeypatch.delenv(decode.LIMIT_ENV, raising=False)  # and the stages' own setting undone after the test
    write(tmp_path / "d", "x-000000.tar", good(6, "a"))
    pattern = str(tmp_path / "d" / "x-*.tar")
    with pytest.raises(W2SError, match=r"shard x-000000.tar, key 'a000': cannot decode 'png' \(its header declares "
                                       r"8 x 8 = 64 pixels, over the limit of 63 \(--max-image-pixels\)"):
        label(tmp_path, weak_ckpt, pattern, workers=1, max_image_pixels=63)
    result = label(tmp_path, weak_ckpt, pattern, workers=1, max_image_pixels=64)
    assert result.complete and result.samples_total == 6
    with pytest.raises(W2SError, match=r"key 'a00\d': cannot decode 'png' \(its header declares 8 x 8"):
        run_train(TrainConfig.tiny(labels=result.store, no_eval=True, run="t", epochs=1, batch_size=2,
                                   workers=1, max_image_pixels=10))
    assert run_train(TrainConfig.tiny(labels=result.store, no_eval=True, run="t2", epochs=1,
                                      batch_size=2, workers=1)).finished  # the default again

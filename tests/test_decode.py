"""The decoders behind `label --decode`: each against timm's reference eval transform, the PIL
fallback, and the batched device decoder (run here on the CPU; on a GPU by test_label)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from w2s_pipe.errors import W2SError
from w2s_pipe.pipeline.image.decode import decode_batch, decode_image, decode_tensor
from w2s_pipe.pipeline.image.preprocess import DeviceNormalize, Preprocess, TensorGeometry, eval_transform
from w2s_pipe.pipeline.loaders.shard_batches import ImageBatch, ShardBatches, ShardEnd, batch_images
from w2s_pipe.pipeline.sources.shards import write_shard

CPU = torch.device("cpu")
CONFIGS = {
    "center-bicubic": {"input_size": [3, 64, 64], "interpolation": "bicubic", "mean": [0.485, 0.456, 0.406],
                       "std": [0.229, 0.224, 0.225], "crop_pct": 0.95, "crop_mode": "center"},
    "center-bilinear": {"input_size": [3, 48, 48], "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3,
                        "crop_pct": 0.875, "crop_mode": "center"},
    "squash": {"input_size": [3, 56, 56], "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.25] * 3,
               "crop_pct": 0.9, "crop_mode": "squash"},
    "border": {"input_size": [3, 40, 40], "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3,
               "crop_pct": 0.9, "crop_mode": "border"},
}


def picture(seed, size=(150, 110)):
    """A photo-like RGB array: smooth structure plus noise, so resampling differences show."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(xx / rng.uniform(5, 30) + c) * np.cos(yy / rng.uniform(5, 30)) for c in range(3)], -1)
    return np.clip(base * 80 + 128 + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)


def encode(array, fmt, **kw):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kw)
    return buf.getvalue()


def samples(n=6):
    out = [{"__key__": f"j{i}", "jpg": encode(picture(i), "JPEG", quality=90)} for i in range(n)]
    out.append({"__key__": "p0", "jpg": encode(picture(99, (90, 130)), "PNG")})  # a PNG in the jpg field
    return out


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cpu_decoder_is_within_one_grey_level_of_timms_reference(name):
    cfg = CONFIGS[name]
    cpu, pil = Preprocess(cfg, "cpu"), Preprocess(cfg, "pil")
    diffs = []
    for s in samples():
        a, b = cpu(s, ("jpg",), "x"), pil(s, ("jpg",), "x")
        assert a.dtype == b.dtype == torch.uint8 and a.shape == b.shape == (3, *cfg["input_size"][1:])
        diffs.append((a.int() - b.int()).abs())
    d = torch.stack(diffs).float()
    assert d.max() <= 1 and d.mean() < 0.5  # the resize rounds differently; decoding is the same libjpeg
    if cfg["crop_mode"] == "border":
        assert d.max() == 0  # no tensor route for timm's padded border mode: PIL throughout


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_pil_decoder_with_device_normalisation_is_timms_eval_transform(name):
    cfg = CONFIGS[name]
    prepare, reference, normalize = Preprocess(cfg, "pil"), eval_transform(cfg), DeviceNormalize(cfg, CPU)
    for s in samples(3):
        ours = normalize(prepare(s, ("jpg",), "x")[None])[0]
        theirs = reference(decode_image(s, ("jpg",), "x"))
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_decode_tensor_falls_back_to_pil_and_names_what_it_cannot_read():
    rgb = picture(3, (40, 30))
    for fmt in ("BMP", "TIFF"):  # torchvision does not read these: PIL does, exactly
        assert torch.equal(decode_tensor(encode(rgb, fmt), "w"), torch.from_numpy(rgb).permute(2, 0, 1))
    grey = encode(rgb[..., 0], "JPEG")
    cmyk = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(cmyk, format="JPEG")
    for blob in (grey, cmyk.getvalue()):
        assert decode_tensor(blob, "w").shape == (3, 30, 40)
    jpg = encode(rgb, "JPEG")
    for broken in (jpg[: len(jpg) // 2], b"", b"not an image"):
        with pytest.raises(W2SError, match=r"^shard s, key 'k': cannot decode 'jpg' \("):
            decode_tensor(broken, "shard s, key 'k': cannot decode 'jpg'")


@pytest.mark.parametrize("name", ["center-bicubic", "center-bilinear", "squash"])
def test_decode_batch_is_close_to_timms_reference_and_reports_bad_images(name):
    """The batched path (one resampling of each crop box for the whole batch, here on CPU tensors)
    against timm's PIL transform on noisy photo-like images: 0.6 grey levels apart on average, at
    most 8 (its filter is a box-averaged bilinear, PIL's a bicubic or triangle); and the same
    predictions from a model on both."""
    import timm

    cfg = CONFIGS[name]
    good = samples(6)
    blobs = [s["jpg"] for s in good]
    blobs.insert(2, blobs[0][:500])  # a truncated JPEG among them
    images, bad = decode_batch(blobs, TensorGeometry(cfg), CPU, lambda i: f"image {i}")
    assert list(bad) == [2] and bad[2].startswith("image 2 (")
    reference = torch.stack([Preprocess(cfg, "pil")(s, ("jpg",), "x") for s in good]).float()
    assert images.dtype == torch.float32 and images.shape == reference.shape
    d = (images.round() - reference).abs()
    assert d.mean() < 1.0 and d.max() <= 8
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=10).eval()
    normalize = DeviceNormalize(cfg, CPU)
    with torch.no_grad():
        ours, theirs = model(normalize(images)), model(normalize(reference))
    assert (ours - theirs).abs().max() < 0.02 * (theirs.max() - theirs.min())
    none, all_bad = decode_batch([b"junk"], TensorGeometry(cfg), CPU, lambda i: "only")
    assert none is None and list(all_bad) == [0]


def test_gpu_mode_loader_ships_bytes_and_the_device_step_skips_or_stops(tmp_path):
    cfg = CONFIGS["center-bilinear"]
    good = samples(4)
    shard = [{**s, "cls": i} for i, s in enumerate(good)]
    shard.insert(1, {"__key__": "broken", "jpg": good[0]["jpg"][:300], "cls": 7})
    url = write_shard(str(tmp_path / "g-000000.tar"), shard).url
    loader = ShardBatches([(0, url)], prepare=Preprocess(cfg, "gpu"), batch_size=16, image_fields=("jpg",),
                          label_field="cls")
    batch, end = list(loader)
    assert isinstance(batch, ImageBatch) and isinstance(end, ShardEnd)
    assert batch.blobs[1] == shard[1]["jpg"] and batch.images is None and end.count == 6  # bad only on the device

    images, keys, labels, skipped = batch_images(batch, TensorGeometry(cfg), CPU, "g-000000.tar", skip_bad=True)
    assert keys == ["j0", "j1", "j2", "j3", "p0"] and labels.tolist() == [0, 1, 2, 3, 4]  # broken (7) left out
    assert skipped == [{"key": "broken", "reason": skipped[0]["reason"]}]
    assert skipped[0]["reason"].startswith("cannot decode the image (")
    expected, _ = decode_batch([s["jpg"] for s in good], TensorGeometry(cfg), CPU, lambda i: "x")
    assert torch.equal(images, expected)
    with pytest.raises(W2SError, match=r"^shard g-000000.tar, key 'broken': cannot decode the image .*--on-bad-sample skip"):
        batch_images(batch, TensorGeometry(cfg), CPU, "g-000000.tar", hint=" (or pass --on-bad-sample skip)")


def test_gpu_decoding_refuses_timms_border_mode():
    """Rewritten against the public decision (decode.resolve_decoder) when Preprocess stopped
    re-checking the decoder it is given."""
    from w2s_pipe.pipeline.image.decode import resolve_decoder

    gpu = torch.device("cuda")  # a device object only: nothing runs on it
    with pytest.raises(W2SError, match="--decode gpu cannot apply crop_mode 'border'"):
        resolve_decoder("gpu", gpu, border_crop=CONFIGS["border"].get("crop_mode") == "border")
    assert resolve_decoder("auto", gpu, border_crop=True) == "cpu"
    with pytest.raises(W2SError, match="--decode 'nvjpeg' is invalid"):
        resolve_decoder("nvjpeg", CPU)


def test_evaluation_through_the_device_path_on_cpu_tensors(tmp_path):
    """`evaluate` with decoder gpu (bytes from the loader, decoded and cropped by decode_batch; here on
    CPU tensors) counts the same samples and nearly the same accuracy as the cpu decoder, and names
    a broken image."""
    import timm

    from w2s_pipe.pipeline.evaluation.accuracy import evaluate

    cfg = CONFIGS["center-bilinear"]
    shard = [{**s, "cls": i % 3} for i, s in enumerate(samples(6))]
    url = write_shard(str(tmp_path / "e-000000.tar"), shard).url
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=3)
    kw = dict(image_fields=("jpg",), label_field="cls", batch_size=4, workers=0, device=CPU)
    cpu, gpu = (evaluate(model, [url], cfg, decoder=d, **kw) for d in ("cpu", "gpu"))
    assert cpu["samples"] == gpu["samples"] == 7 and abs(cpu["top1"] - gpu["top1"]) <= 1 / 7
    shard[2]["jpg"] = shard[2]["jpg"][:300]
    broken = write_shard(str(tmp_path / "b-000000.tar"), shard).url
    with pytest.raises(W2SError, match=r"^shard b-000000.tar, key 'j2': cannot decode the image"):
        evaluate(model, [broken], cfg, decoder="gpu", **kw)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nvJPEG's out-of-order writes need a CUDA GPU; the CPU "
                                                          "decoder these same calls use is tested above")
def test_gpu_decoding_never_writes_into_memory_queued_kernels_still_read():
    """The harness of pytorch/vision#9606 through `decode_images`: each round queues a long matmul
    chain and then a sum of each of 32 tensors on our stream, frees the tensors while the sums are
    still queued, and decodes 32 JPEGs whose outputs have the freed tensors' exact size, so the
    caching allocator hands the decoder those blocks. Every sum must be what the tensors held: on
    an H100/H200 without the barrier in decode_images most rounds read decoded pixels instead.
    Device: the first CUDA GPU; exact integer sums, so no tolerance."""
    from w2s_pipe.pipeline.image.decode import decode_images

    gpu = torch.device("cuda", 0)
    h, w, n = 224, 224, 32
    blobs = [encode(picture(i, (w, h)), "JPEG", quality=90) for i in range(n)]
    heavy = torch.randn(2048, 2048, device=gpu)
    wrong = 0
    for _ in range(20):
        held = [torch.full((3, h, w), 1, dtype=torch.uint8, device=gpu) for _ in range(n)]
        for _ in range(20):  # tens of milliseconds of queued work before the sums run
            heavy = torch.tanh(heavy @ heavy)
        sums = [t.sum(dtype=torch.int64) for t in held]
        del held  # freed on our stream while the sums that read them are still queued
        images, bad = decode_images(blobs, gpu, lambda i: f"image {i}")
        assert not bad and all(tuple(im.shape) == (3, h, w) for im in images)
        wrong += sum(int(s) != 3 * h * w for s in sums)
    assert wrong == 0, f"{wrong} of {20 * n} sums read memory the decoder wrote"

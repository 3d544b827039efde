"""Training views applied by each decoder: pil is timm's RandomResizedCrop for the view, to the
pixel; cpu and the device path (run here on CPU tensors) stay within a few grey levels of it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_decode import encode, picture

from w2s_pipe.errors import W2SError
from w2s_pipe.pipeline.image.decode import resolve_decoder
from w2s_pipe.pipeline.views.params import TrainViews, View
from w2s_pipe.pipeline.views.pixels import DeviceAugment, TrainAugment, header_size
from w2s_pipe.stages.train_config import TrainConfig

CONFIG = {"input_size": [3, 40, 40], "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.5] * 3}
CPU = torch.device("cpu")


def jpeg_samples(n=8):
    return [{"__key__": f"k{i}", "jpg": encode(picture(i, (150, 110)), "JPEG", quality=92)} for i in range(n)]


def test_pil_path_is_timms_random_resized_crop_for_the_view(monkeypatch):
    import io

    import timm.data
    from PIL import Image
    from timm.data import transforms as timm_transforms

    augment = TrainAugment(CONFIG, TrainViews(0, hflip=0.0), "pil")
    reference = timm.data.create_transform(input_size=(3, 40, 40), is_training=True, hflip=0.0, interpolation="bicubic",
                                           color_jitter=0.0, use_prefetcher=True)  # uint8 out, no normalisation
    for sample in jpeg_samples():
        ours, view = augment(sample, ("jpg",), "s.tar", 0)
        monkeypatch.setattr(timm_transforms.RandomResizedCropAndInterpolation, "get_params",
                            staticmethod(lambda img, scale, ratio: (view.top, view.left, view.height, view.width)))
        theirs = reference(Image.open(io.BytesIO(sample["jpg"])).convert("RGB"))
        assert torch.equal(ours, theirs)


def test_cpu_and_device_paths_apply_the_same_view_as_pil():
    """Same views; pixels within 0.75 grey levels on average (noisy photo-like images), at most 8."""
    views = TrainViews(7, scale=(0.2, 1.0), hflip=0.5)
    samples = jpeg_samples()
    pil = [TrainAugment(CONFIG, views, "pil")(s, ("jpg",), "s.tar", 3) for s in samples]
    cpu = [TrainAugment(CONFIG, views, "cpu")(s, ("jpg",), "s.tar", 3) for s in samples]
    gpu = [TrainAugment(CONFIG, views, "gpu")(s, ("jpg",), "s.tar", 3) for s in samples]
    assert [v for _, v in pil] == [v for _, v in cpu] == [v for _, v in gpu]
    assert any(v.flip for _, v in pil) and not all(v.flip for _, v in pil)
    assert all(blob == s["jpg"] for (blob, _), s in zip(gpu, samples))  # the device path ships bytes
    reference = torch.stack([img for img, _ in pil]).float()
    on_device = DeviceAugment(CONFIG, CPU)(
        [b for b, _ in gpu], torch.tensor([v.as_row() for _, v in gpu]), [("s.tar", s["__key__"]) for s in samples])
    for name, images in (("cpu", torch.stack([img for img, _ in cpu]).float()), ("device", on_device.round())):
        d = (images - reference).abs()
        assert images.shape == reference.shape and d.mean() < 0.75 and d.max() <= 8, (name, d.mean(), d.max())


def test_device_path_names_a_bad_image():
    good = jpeg_samples(2)
    blobs = [good[0]["jpg"], good[1]["jpg"][:400]]
    rows = torch.tensor([View(0, 0, 50, 50, False, 110, 150).as_row()] * 2)
    with pytest.raises(W2SError, match=r"^shard s.tar, key 'k1': cannot decode the image"):
        DeviceAugment(CONFIG, CPU)(blobs, rows, [("s.tar", "k0"), ("s.tar", "k1")])


def test_header_size_and_choices():
    sample = jpeg_samples(1)[0]
    assert header_size(sample["jpg"], "x") == (110, 150)
    with pytest.raises(W2SError, match="^shard s, key 'k': cannot decode 'jpg'"):
        header_size(b"garbage", "shard s, key 'k': cannot decode 'jpg'")
    assert resolve_decoder("auto", CPU) == "cpu" and resolve_decoder("pil", CPU) == "pil"
    with pytest.raises(W2SError, match="--decode gpu needs a CUDA device"):
        resolve_decoder("gpu", CPU)
    # the checks moved from TrainAugment to where the choices are made (the decoder, the config)
    gpu = torch.device("cuda")  # a device object only: nothing runs on it
    with pytest.raises(W2SError, match="--color-jitter .* --decode cpu or pil"):
        resolve_decoder("gpu", gpu, loading_only=("--color-jitter",))
    with pytest.raises(W2SError, match="--aa .* --decode cpu or pil"):
        resolve_decoder("gpu", gpu, loading_only=("--aa",))
    with pytest.raises(W2SError, match="give --aa or --color-jitter, not both"):
        TrainConfig.tiny(color_jitter=0.4, aa="rand-m9-mstd0.5-inc1")
    with pytest.raises(W2SError, match="--aa 'bogus' is not one of timm's auto-augment strings"):
        TrainAugment(CONFIG, TrainViews(0), "cpu", auto_augment="bogus")
    # on a GPU the device path is the default, unless a policy only the loading processes apply is on
    assert resolve_decoder("auto", gpu) == "gpu" and resolve_decoder("auto", gpu, loading_only=("--aa",)) == "cpu"


def test_color_jitter_is_part_of_the_view():
    views = TrainViews(1)
    sample = jpeg_samples(1)[0]
    a, _ = TrainAugment(CONFIG, views, "cpu", color_jitter=0.4)(sample, ("jpg",), "s.tar", 0)
    b, _ = TrainAugment(CONFIG, views, "cpu", color_jitter=0.4)(sample, ("jpg",), "s.tar", 0)
    plain, _ = TrainAugment(CONFIG, views, "cpu")(sample, ("jpg",), "s.tar", 0)
    assert torch.equal(a, b) and not torch.equal(a, plain)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nvJPEG and the device path need a CUDA GPU; the same code "
                    "runs on CPU tensors above")
def test_device_path_on_a_gpu_matches_it_on_cpu_tensors():
    """nvJPEG against libjpeg-turbo differ by a grey level here and there; the crops the same."""
    views = TrainViews(5, scale=(0.2, 1.0))
    samples = jpeg_samples()
    shipped = [TrainAugment(CONFIG, views, "gpu")(s, ("jpg",), "s.tar", 0) for s in samples]
    blobs, rows = [b for b, _ in shipped], torch.tensor([v.as_row() for _, v in shipped])
    keys = [("s.tar", s["__key__"]) for s in samples]
    on_gpu = DeviceAugment(CONFIG, torch.device("cuda"))(blobs, rows.cuda(), keys).cpu()
    on_cpu = DeviceAugment(CONFIG, CPU)(blobs, rows, keys)
    d = (on_gpu - on_cpu).abs()
    assert d.mean() < 1.0 and d.max() <= 12


def test_auto_augment_policies_run_on_this_pillow():
    """timm's noisy magnitudes (mstd) take posterize to 0 bits kept, which Pillow 13 refuses: every
    policy the recipes use runs on 2000 draws, and 0 bits gives the black image older Pillows made."""
    import random

    from PIL import Image

    from w2s_pipe.pipeline.views.pixels import auto_augment_policy, posterize

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    for spec in ("rand-m9-mstd0.5-inc1", "original-mstd0.5"):
        policy = auto_augment_policy(spec, CONFIG)
        for i in range(2000):
            random.seed(i)
            assert policy(image).size == image.size
    assert not np.asarray(posterize(image, 0)).any()
    assert np.array_equal(np.asarray(posterize(image, 2)), np.asarray(image) & 0b11000000)

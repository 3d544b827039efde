"""pipeline/models/build.py: names, aliases, checkpoints and their errors, with real timm models."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_MODEL, make_checkpoint

from w2s_pipe.errors import W2SError
from w2s_pipe.pipeline.models.build import ALIASES, load_model, resolve_model_name


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_every_alias_is_a_timm_model(alias):
    import timm

    assert timm.is_model(resolve_model_name(alias))


def test_unknown_model_suggests():
    with pytest.raises(W2SError, match="unknown model 'resnet181'; did you mean .*resnet18"):
        resolve_model_name("resnet181")


def test_tool_checkpoint_restores_model_and_preprocessing(weak_ckpt):
    loaded = load_model(None, checkpoint=weak_ckpt, num_classes=10)
    assert loaded.name == TINY_MODEL and loaded.num_classes == 10
    assert loaded.data_config["input_size"] == [3, 32, 32]
    assert loaded.data_config["crop_pct"] == 0.95  # the model's own, not ImageNet's 0.875
    saved = torch.load(weak_ckpt, weights_only=True)["state_dict"]
    for k, v in loaded.model.state_dict().items():
        torch.testing.assert_close(v, saved[k])
    with pytest.raises(W2SError, match="checkpoint .* has 10 classes but the dataset has 1000"):
        load_model(None, checkpoint=weak_ckpt, num_classes=1000)
    with pytest.raises(W2SError, match="--weak resnet18 does not match checkpoint"):
        load_model("resnet18", checkpoint=weak_ckpt, num_classes=10)


def test_plain_state_dict(tmp_path):
    path = make_checkpoint(tmp_path / "plain.pt", num_classes=7, plain=True)
    loaded = load_model(TINY_MODEL, checkpoint=path, num_classes=None, img_size=32)
    assert loaded.num_classes == 7  # from the head's shape
    with pytest.raises(W2SError, match="has 7 classes but the dataset has 10"):
        load_model(TINY_MODEL, checkpoint=path, num_classes=10)
    with pytest.raises(W2SError, match="does not fit"):
        load_model("test_vit", checkpoint=path, num_classes=7)
    with pytest.raises(W2SError, match="plain state dict: name its model with --weak"):
        load_model(None, checkpoint=path, num_classes=7)


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "junk.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(W2SError, match="junk.pt is not a PyTorch checkpoint"):
        load_model(TINY_MODEL, checkpoint=str(bad), num_classes=10)
    with pytest.raises(W2SError, match="does not exist"):
        load_model(TINY_MODEL, checkpoint=str(tmp_path / "none.pt"), num_classes=10)


def test_pretrained_unreachable_suggests_checkpoint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(W2SError, match="cannot fetch timm's pretrained weights for test_resnet .*--weak-checkpoint"):
        load_model(TINY_MODEL, checkpoint=None, num_classes=1000)
    with pytest.raises(W2SError, match="predicts 1000 classes but the dataset has 10"):
        load_model(TINY_MODEL, checkpoint=None, num_classes=10)


def test_img_size_the_model_cannot_take():
    from w2s_pipe.pipeline.models.build import create_model

    with pytest.raises(W2SError, match="test_vit cannot take --img-size 24: .*divisible by patch size"):
        create_model("test_vit", 10, 24)
    assert create_model("test_vit", 10, 32).patch_embed.img_size == (32, 32)


def test_strong_model_options_drop_path_and_head_init():
    """--drop-path reaches timm's stochastic depth (or is one line for a model without it);
    --head-init-std re-initialises the classifier, as MAE's fine-tuning does."""
    from w2s_pipe.pipeline.models.build import build_strong

    torch.manual_seed(0)
    model, _ = build_strong("test_vit", 10, drop_path=0.1, head_init_std=2e-5)
    assert [type(b.drop_path2).__name__ for b in model.blocks][-1] == "DropPath"
    head = model.get_classifier()
    assert head.weight.abs().max() <= 1.2e-4 and 1e-5 < head.weight.std() < 3e-5 and not head.bias.any()
    plain, _ = build_strong("test_vit", 10)
    assert plain.get_classifier().weight.std() > 1e-3
    with pytest.raises(W2SError, match="--drop-path: cifar_resnet20 has no stochastic depth"):
        build_strong("cifar_resnet20", 10, drop_path=0.1)

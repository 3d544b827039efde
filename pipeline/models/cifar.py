"""The paper's CIFAR networks, in timm's registry under a `cifar_` prefix.

    w2s-pipe train --strong cifar_resnet56 --loss adaptconf ...    # timm.create_model("cifar_resnet56")

The architectures the official code trains on CIFAR (the knowledge-distillation benchmark's set),
written here from their definitions: ResNets for 32 px inputs (three stages of basic blocks, 6n+2
layers; the "x4" ones four times as wide), VGG with batch norm and a 512 -> classes head, wide
ResNets (pre-activation blocks, depth 6n+4, widening factor k), ShuffleNet v1 (3 groups) and v2
(1x) with a 1x1 stem for 32 px, and MobileNetV2 at half width with expansion 6. Parameter counts for 100
classes equal the official models' (tests/test_cifar.py pins them). Registered when this module is
imported, which `pipeline.models` does, so every command knows them.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import get_pretrained_cfg, register_model
from timm.models._registry import generate_default_cfgs

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
_TIMM_KEYS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def _cfg(classifier: str) -> dict:
    return {"num_classes": 100, "input_size": (3, 32, 32), "pool_size": None, "crop_pct": 0.875,
            "interpolation": "bilinear", "mean": CIFAR100_MEAN, "std": CIFAR100_STD, "first_conv": "conv1",
            "classifier": classifier}


class _Classifier:
    """What timm's code and this tool ask of a classifier network."""

    classifier_name = "fc"

    def get_classifier(self) -> nn.Module:
        return getattr(self, self.classifier_name)

    def reset_classifier(self, num_classes: int, global_pool=None) -> None:
        head = self.get_classifier()
        setattr(self, self.classifier_name, nn.Linear(head.in_features, num_classes) if num_classes else nn.Identity())
        self.num_classes = num_classes


# -- ResNet (CIFAR) -----------------------------------------------------------------------------
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class CifarResNet(_Classifier, nn.Module):
    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int = 100):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet has 6n+2 layers, not {depth}")
        n = (depth - 2) // 6
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, cin = [], widths[0]
        for i, cout in enumerate(widths[1:]):
            blocks = [BasicBlock(cin if j == 0 else cout, cout, 2 if (i > 0 and j == 0) else 1) for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.forward_features(x), 1), 1))


# -- VGG with batch norm (CIFAR) ----------------------------------------------------------------
VGG_STAGES = {8: [[64], [128], [256], [512], [512]],
              13: [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]]}


class CifarVGG(_Classifier, nn.Module):
    """Five stages of 3x3 conv + BN (+ ReLU but after a stage's last conv, where the forward
    applies it), max-pooling between the first four, global average pooling, Linear(512, classes)."""

    classifier_name = "classifier"

    def __init__(self, stages: list[list[int]], num_classes: int = 100):
        super().__init__()
        self.num_classes = num_classes
        blocks, cin = [], 3
        for widths in stages:
            layers = []
            for cout in widths:
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
                cin = cout
            blocks.append(nn.Sequential(*layers[:-1]))
        self.blocks = nn.ModuleList(blocks)
        self.classifier = nn.Linear(512, num_classes)

    def forward_features(self, x):
        for i, block in enumerate(self.blocks):
            x = F.relu(block(x))
            if i < 3 or (i == 3 and x.shape[-1] > 4):  # 32 px: pooled to 4 x 4 before the last stage
                x = F.max_pool2d(x, 2)
        return x

    def forward(self, x):
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.forward_features(x), 1), 1))


# -- Wide ResNet (CIFAR) -----------------------------------------------------------------------
class WideBlock(nn.Module):
    """Pre-activation: BN-ReLU-conv, BN-ReLU-conv; a 1x1 shortcut where the width or stride changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None if cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        pre = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class CifarWideResNet(_Classifier, nn.Module):
    def __init__(self, depth: int, widen: int, num_classes: int = 100):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"a wide ResNet has 6n+4 layers, not {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        stages, cin = [], widths[0]
        for i, cout in enumerate(widths[1:]):
            stages.append(nn.Sequential(*[WideBlock(cin if j == 0 else cout, cout, 2 if (i > 0 and j == 0) else 1)
                                          for j in range(n)]))
            cin = cout
        self.block1, self.block2, self.block3 = stages
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)

    def forward_features(self, x):
        return F.relu(self.bn1(self.block3(self.block2(self.block1(self.conv1(x))))))

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.forward_features(x), 1), 1))


def channel_shuffle(x, groups: int):
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


# -- ShuffleNet v1 (CIFAR) ----------------------------------------------------------------------
class ShuffleUnit(nn.Module):
    """Grouped 1x1, shuffle, depthwise 3x3, grouped 1x1; a stride-2 unit concatenates the input,
    average-pooled, instead of adding it (so it produces cout - cin new channels)."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int):
        super().__init__()
        mid = cout // 4
        self.first_groups = 1 if cin == 24 else groups  # the stem's 24 channels are not grouped
        self.conv1 = nn.Conv2d(cin, mid, 1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.stride = stride

    def forward(self, x):
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.first_groups)
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], 1))
        return F.relu(out + x)


class CifarShuffleNetV1(_Classifier, nn.Module):
    classifier_name = "linear"

    def __init__(self, widths=(240, 480, 960), depths=(4, 8, 4), groups: int = 3, num_classes: int = 100):
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        stages, cin = [], 24
        for cout, depth in zip(widths, depths):
            units = [ShuffleUnit(cin, cout - cin, 2, groups)] + [ShuffleUnit(cout, cout, 1, groups) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*units))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x))))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# -- ShuffleNet v2 (CIFAR) ----------------------------------------------------------------------
class SplitUnit(nn.Module):
    """Half the channels pass; the other half go 1x1, depthwise 3x3, 1x1; concatenate and shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.conv1, self.bn1 = nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half)
        self.conv2, self.bn2 = nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False), nn.BatchNorm2d(half)
        self.conv3, self.bn3 = nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half)

    def forward(self, x):
        keep, work = x.chunk(2, dim=1)
        work = F.relu(self.bn3(self.conv3(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(work))))))))
        return channel_shuffle(torch.cat([keep, work], 1), 2)


class DownUnit(nn.Module):
    """Two stride-2 branches of cout / 2 channels each (depthwise then 1x1; 1x1, depthwise, 1x1)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = cout // 2
        self.conv1, self.bn1 = nn.Conv2d(cin, cin, 3, 2, 1, groups=cin, bias=False), nn.BatchNorm2d(cin)
        self.conv2, self.bn2 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv4, self.bn4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False), nn.BatchNorm2d(mid)
        self.conv5, self.bn5 = nn.Conv2d(mid, mid, 1, bias=False), nn.BatchNorm2d(mid)

    def forward(self, x):
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x)))))
        right = F.relu(self.bn5(self.conv5(right)))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class CifarShuffleNetV2(_Classifier, nn.Module):
    classifier_name = "linear"

    def __init__(self, widths=(116, 232, 464, 1024), depths=(3, 7, 3), num_classes: int = 100):
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        stages, cin = [], 24
        for cout, depth in zip(widths[:3], depths):
            stages.append(nn.Sequential(DownUnit(cin, cout), *[SplitUnit(cout) for _ in range(depth)]))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(widths[2], widths[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(widths[3])
        self.linear = nn.Linear(widths[3], num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x))))))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# -- MobileNetV2 (CIFAR, half width) ------------------------------------------------------------
def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(_conv_bn_relu(cin, hidden, 1), _conv_bn_relu(hidden, hidden, 3, stride, hidden),
                                  nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class CifarMobileNetV2(_Classifier, nn.Module):
    classifier_name = "classifier"
    # (expansion, channels, blocks, stride); the first stage never expands
    SETTING = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, width: float = 0.5, num_classes: int = 100):
        super().__init__()
        self.num_classes = num_classes
        cin = int(32 * width)
        self.conv1 = _conv_bn_relu(3, cin, 3, 2)
        blocks = []
        for expand, channels, n, stride in self.SETTING:
            cout = int(channels * width)
            blocks += [InvertedResidual(cin if i == 0 else cout, cout, stride if i == 0 else 1, expand) for i in range(n)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        last = int(1280 * width) if width > 1.0 else 1280
        self.conv2 = _conv_bn_relu(cin, last, 1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x):
        x = self.conv2(self.blocks(self.conv1(x)))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# -- registration --------------------------------------------------------------------------------
_RESNETS = {"cifar_resnet8": (8, (16, 16, 32, 64)), "cifar_resnet20": (20, (16, 16, 32, 64)),
            "cifar_resnet32": (32, (16, 16, 32, 64)), "cifar_resnet56": (56, (16, 16, 32, 64)),
            "cifar_resnet110": (110, (16, 16, 32, 64)), "cifar_resnet8x4": (8, (32, 64, 128, 256)),
            "cifar_resnet32x4": (32, (32, 64, 128, 256))}
_WRNS = {"cifar_wrn_40_2": (40, 2), "cifar_wrn_16_2": (16, 2)}
_VGGS = {"cifar_vgg8": 8, "cifar_vgg13": 13}
_OTHERS = {"cifar_shufflenetv1": (CifarShuffleNetV1, "linear"), "cifar_shufflenetv2": (CifarShuffleNetV2, "linear"),
           "cifar_mobilenetv2": (CifarMobileNetV2, "classifier")}

default_cfgs = generate_default_cfgs({
    **{name: _cfg("fc") for name in (*_RESNETS, *_WRNS)},
    **{name: _cfg("classifier") for name in _VGGS},
    **{name: _cfg(head) for name, (_, head) in _OTHERS.items()},
})


def _build(name: str, cls, args: tuple, pretrained: bool, kwargs: dict):
    for key in _TIMM_KEYS:
        kwargs.pop(key, None)
    if pretrained:
        raise RuntimeError(f"{name} has no pretrained weights to fetch; train it (`w2s-pipe train --loss gt`)")
    num_classes = kwargs.pop("num_classes", 100)
    if kwargs:  # e.g. img_size: these networks take any size and no such argument
        raise TypeError(f"unexpected arguments {sorted(kwargs)}")
    model = cls(*args, num_classes=num_classes)
    # What timm's own builders attach, so that timm's data config resolves to 32 px and CIFAR stats.
    model.pretrained_cfg = model.default_cfg = {**get_pretrained_cfg(name).to_dict(), "num_classes": num_classes}
    return model


def _register(name: str, cls, args: tuple):
    def create(pretrained: bool = False, **kwargs):
        return _build(name, cls, args, pretrained, kwargs)

    create.__name__ = create.__qualname__ = name
    create.__module__ = __name__
    create.__doc__ = f"{cls.__name__}{args} for 32 px inputs."
    return register_model(create)


for _name, (_depth, _widths) in _RESNETS.items():
    _register(_name, CifarResNet, (_depth, _widths))
for _name, (_depth, _widen) in _WRNS.items():
    _register(_name, CifarWideResNet, (_depth, _widen))
for _name, _depth in _VGGS.items():
    _register(_name, CifarVGG, (VGG_STAGES[_depth],))
for _name, (_cls, _) in _OTHERS.items():
    _register(_name, _cls, ())

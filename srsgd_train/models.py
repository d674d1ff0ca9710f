"""Models: torchvision ResNets (+ ResNet-200), bottleneck Pre-ResNet for CIFAR, small nets."""

from __future__ import annotations

import re

import torch
from torch import nn

from srsgd_train.errors import UserError


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck (He et al., 2016b): BN-ReLU-conv, x4 expansion."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != out:
            self.shortcut = nn.Conv2d(in_planes, out, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu(self.bn1(x))
        shortcut = self.shortcut(pre) if self.shortcut is not None else x
        out = self.conv1(pre)
        out = self.conv2(torch.relu(self.bn2(out)))
        out = self.conv3(torch.relu(self.bn3(out)))
        return out + shortcut


class PreResNet(nn.Module):
    """Bottleneck Pre-ResNet for 32x32 inputs; depth = 9n + 2 (110, 164, 290, 470, 650, 1001)."""

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 9 != 0 or depth < 11:
            raise UserError(f"Pre-ResNet depth must be 9n+2 (e.g. 110, 290, 470, 650, 1001), got {depth}.")
        n = (depth - 2) // 9
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        layers, in_planes = [], 16
        for planes, stride in [(16, 1), (32, 2), (64, 2)]:
            for i in range(n):
                layers.append(PreActBottleneck(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes * PreActBottleneck.expansion
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.conv1(x))
        x = torch.relu(self.bn(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def small_cnn(num_classes: int, in_channels: int = 1) -> nn.Module:
    """A few-thousand-parameter CNN for 8x8 digits: trains on a laptop CPU in seconds."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes),
    )


def mlp(num_classes: int, in_features: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, 128), nn.ReLU(), nn.Linear(128, num_classes))


def build_model(name: str, num_classes: int, in_channels: int = 3, image_size: int = 32,
                zero_init_residual: bool = False) -> nn.Module:
    from torchvision.models import resnet
    from torchvision.models.resnet import Bottleneck, ResNet

    name = name.lower().replace("-", "").replace("_", "")
    if name == "smallcnn":
        return small_cnn(num_classes, in_channels)
    if name == "mlp":
        return mlp(num_classes, in_channels * image_size * image_size)
    if m := re.fullmatch(r"preresnet(\d+)", name):
        return PreResNet(int(m.group(1)), num_classes, in_channels)
    if name == "resnet200":
        return ResNet(Bottleneck, [3, 24, 36, 3], num_classes=num_classes, zero_init_residual=zero_init_residual)
    if name in {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152"}:
        return getattr(resnet, name)(weights=None, num_classes=num_classes, zero_init_residual=zero_init_residual)
    raise UserError(
        f"Unknown model {name!r}. Choose small_cnn, mlp, preresnet<9n+2> (e.g. preresnet110), "
        "resnet18/34/50/101/152 or resnet200."
    )

"""``tinynet``: a test-scale classifier with ResNet's module layout, for the test suite and
quick smoke runs (``model.backbone: tinynet``).

About 4,200 parameters: a stem (``conv1`` + ``bn1``), three conv-BatchNorm-ReLU stages
(``layer1``-``layer3``, the last two halving the resolution), global max pooling and a
``Linear`` head (``fc``). Max rather than average pooling: a mass covers a few percent of a
small image, and the strongest response anywhere is what flags it. It trains on a CPU in a
fraction of a second per batch, so every mechanism of the trainers (warm-up, gradual unfreezing
block by block, frozen BatchNorm statistics, DDP) runs in tests at the cost of the data path,
not of a real backbone. It has no pretrained weights and is no model for mammograms.
"""

from __future__ import annotations

import torch
from torch import nn


def _stage(channels_in: int, channels_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(inplace=True),
    )


class TinyNet(nn.Module):
    """Stem, three stages, max pooling, a Linear head of ``num_classes`` outputs."""

    def __init__(self, num_classes: int = 1, in_channels: int = 3, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _stage(width, width, 1)
        self.layer2 = _stage(width, 2 * width, 2)
        self.layer3 = _stage(2 * width, 2 * width, 2)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))

"""The CLIP paper's modified ResNet image encoder: three-conv stem, anti-aliased bottlenecks, attention pooling.

Module and parameter names follow OpenAI's released checkpoints (`visual.layer1.0.downsample.0`, `visual.attnpool.
k_proj`, ...), so their state dicts load with strict=True. Works on channels-last tensors without copies in the
pooling step: the feature map is read as (B, H, W, C), which is contiguous in that memory format.
"""

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class Bottleneck(nn.Module):
    """A ResNet bottleneck whose strided blocks downsample by average pooling, not by a strided conv.

    A stride-2 1x1 conv throws away three of four pixels; pooling first keeps them (the paper's anti-aliasing).
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu3 = nn.ReLU(inplace=True)
        self.downsample = None
        if stride > 1 or inplanes != out:
            # Keys "-1", "0", "1" are the release's: the pool has no parameters, the conv and norm are 0 and 1.
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride) if stride > 1 else nn.Identity()),
                        ("0", nn.Conv2d(inplanes, out, 1, bias=False)),
                        ("1", nn.BatchNorm2d(out)),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)  # (B, C_out, H/s, W/s)
        y = self.relu1(self.bn1(self.conv1(x)))  # (B, P, H, W)
        y = self.relu2(self.bn2(self.conv2(y)))  # (B, P, H, W)
        y = self.bn3(self.conv3(self.avgpool(y)))  # (B, C_out, H/s, W/s)
        return self.relu3(y + identity)  # (B, C_out, H/s, W/s)


class AttentionPool2d(nn.Module):
    """Pools a feature map with one attention query: the mean of the map, attending over the map and itself."""

    def __init__(self, spatial: int, width: int, heads: int, output_dim: int):
        super().__init__()
        self.heads = heads
        self.positional_embedding = nn.Parameter(torch.randn(spatial**2 + 1, width) / width**0.5)
        self.k_proj = nn.Linear(width, width)
        self.q_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.c_proj = nn.Linear(width, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        x = x.permute(0, 2, 3, 1).flatten(1, 2)  # (B, HW, C): a view when x is channels-last
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)  # (B, 1+HW, C)
        x = x + self.positional_embedding.to(x.dtype)  # (B, 1+HW, C)
        dh = c // self.heads
        q = self.q_proj(x[:, :1]).view(b, 1, self.heads, dh).transpose(1, 2)  # (B, H, 1, Dh)
        k = self.k_proj(x).view(b, -1, self.heads, dh).transpose(1, 2)  # (B, H, 1+HW, Dh)
        v = self.v_proj(x).view(b, -1, self.heads, dh).transpose(1, 2)  # (B, H, 1+HW, Dh)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, H, 1, Dh)
        return self.c_proj(y.transpose(1, 2).reshape(b, c))  # (B, E)


class ModifiedResNet(nn.Module):
    """ResNet-D-like trunk (3x3 stem convs, average-pool downsampling) topped by attention pooling."""

    def __init__(self, layers: tuple[int, int, int, int], output_dim: int, heads: int, image_size: int, width: int):
        super().__init__()
        half = width // 2
        self.conv1 = nn.Conv2d(3, half, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(half, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)
        self._inplanes = width
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        # The trunk downsamples by 32 in all; its last stage has width * 8 * expansion = width * 32 channels.
        self.attnpool = AttentionPool2d(image_size // 32, width * 32, heads, output_dim)
        self.initialize_parameters()

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def initialize_parameters(self) -> None:
        """The release's init: attention pooling scaled by its width; each block's last BN starts at zero,
        so every residual branch begins as the identity."""
        std = self.attnpool.c_proj.in_features**-0.5
        for proj in (self.attnpool.q_proj, self.attnpool.k_proj, self.attnpool.v_proj, self.attnpool.c_proj):
            nn.init.normal_(proj.weight, std=std)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                nn.init.zeros_(block.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Channels-last: the layout cuDNN/oneDNN convolutions run fastest in, and the one every layer below then
        # keeps (a convolution's output follows its input's layout); attnpool's permute is then a free view.
        x = x.contiguous(memory_format=torch.channels_last)  # (B, 3, S, S)
        x = self.relu1(self.bn1(self.conv1(x)))  # (B, W/2, S/2, S/2)
        x = self.relu2(self.bn2(self.conv2(x)))  # (B, W/2, S/2, S/2)
        x = self.relu3(self.bn3(self.conv3(x)))  # (B, W, S/2, S/2)
        x = self.avgpool(x)  # (B, W, S/4, S/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 32W, S/32, S/32)
        return self.attnpool(x)  # (B, E)

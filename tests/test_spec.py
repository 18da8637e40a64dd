import numpy as np
import pytest

from cnnmm import ConvSpec, LayerError


def test_parse_defaults_and_pairs():
    s = ConvSpec.parse("N=8,C=64,K=32,H=56,W=55,R=3,S=1,stride=2x1,pad=1,dilation=1x2")
    assert (s.N, s.C, s.K, s.H, s.W, s.R, s.S) == (8, 64, 32, 56, 55, 3, 1)
    assert s.stride == (2, 1) and s.pad == (1, 1) and s.dilation == (1, 2)
    assert ConvSpec.parse("N=1,C=1,K=1,H=3,W=3,R=3,S=3").pad == (0, 0)
    assert ConvSpec.parse(str(s)) == s


@pytest.mark.parametrize("H,R,stride,pad,dil", [(7, 3, 1, 0, 1), (7, 3, 2, 1, 1), (8, 3, 3, 2, 2), (5, 1, 2, 0, 1),
                                                (1, 1, 1, 3, 1), (9, 7, 2, 3, 1)])
def test_output_size_matches_definition(H, R, stride, pad, dil):
    s = ConvSpec(N=1, C=1, K=1, H=H, W=H, R=R, S=R, stride=stride, pad=pad, dilation=dil)
    # last output row's receptive field must fit, one more must not
    last = (s.P - 1) * stride + dil * (R - 1)
    assert last < H + 2 * pad <= last + stride
    assert s.flops == 2 * s.N * s.K * s.C * s.P * s.Q * s.R * s.S
    assert s.sizes()["output"] == int(np.prod(s.output_shape))


@pytest.mark.parametrize("text,match", [
    ("N=0,C=1,K=1,H=3,W=3,R=1,S=1", "N=0"),
    ("N=1,C=1,K=-2,H=3,W=3,R=1,S=1", "K=-2"),
    ("N=1,C=1,K=1,H=3,W=3,R=5,S=1", "larger than the padded input"),
    ("N=1,C=1,K=1,H=3,W=3,R=3,S=3,dilation=2", "larger than the padded input"),
    ("N=1,C=1,K=1,H=3,W=3,R=1", "lacks S"),
    ("N=1,C=1,K=1,H=3,W=3,R=1,S=1,stride=0", "stride"),
    ("N=1,C=1,K=1,H=3,W=3,R=1,S=1,pad=-1", "pad"),
    ("N=1,C=1,K=1,H=3,W=3,R=1,S=1,foo=2", "unknown"),
    ("N=1,C=1,K=1,H=3,W=3,R=1,S=1,stride=1x2x3", "stride"),
    ("N=x,C=1,K=1,H=3,W=3,R=1,S=1", "N="),
    ("N=1,N=2,C=1,K=1,H=3,W=3,R=1,S=1", "twice"),
])
def test_bad_layers(text, match):
    with pytest.raises(LayerError, match=match):
        ConvSpec.parse(text)


def test_bad_dtype():
    with pytest.raises(LayerError, match="dtype"):
        ConvSpec(1, 1, 1, 3, 3, 1, 1, dtype="int32")

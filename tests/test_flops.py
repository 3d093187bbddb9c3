"""`benchmarks/flops.py`'s count of multiply-accumulates, against the paper and the options."""

import pytest

from benchmarks.flops import forward_macs
from keras_cvt.architectures import VARIANTS
from keras_cvt.layers import conv_output_size

# The paper's Table 3 / model zoo, in GFLOPs (multiply-accumulates), rounded to 0.1G.
PUBLISHED = {("cvt13", 224): 4.5, ("cvt13", 384): 16.3, ("cvt21", 224): 7.1, ("cvt21", 384): 24.9}


@pytest.mark.parametrize("variant, size", PUBLISHED)
def test_counts_are_the_published_ones(variant, size):
    v = VARIANTS[variant]
    # The paper leaves out what its count leaves out (norms, the head's softmax...): 2%.
    assert forward_macs(v.depths, v.embed_dims, size) / 1e9 == pytest.approx(PUBLISHED[variant, size], rel=0.02)


def test_the_attention_options_are_read():
    v = VARIANTS["cvt13"]
    default = forward_macs(v.depths, v.embed_dims, 224)
    assert forward_macs(v.depths, v.embed_dims, 224, attention_kernel_size=3, kv_stride=2) == default
    # A 1x1 kernel (padding 0, the same token counts) saves 8 of the 9 depthwise MACs per token.
    height, saved = 224, 0
    for depth, dim, (k, s, p) in zip(v.depths, v.embed_dims, ((7, 4, 2), (3, 2, 1), (3, 2, 1))):
        height = conv_output_size(height, k, s, p)
        kv = conv_output_size(height, 3, 2, 1)
        saved += depth * (height * height + 2 * kv * kv) * dim * 8
    ones = forward_macs(v.depths, v.embed_dims, 224, attention_kernel_size=1, attention_padding=0)
    assert default - ones == saved
    assert forward_macs(v.depths, v.embed_dims, 224, kv_stride=1) > default
    with pytest.raises(TypeError, match=r"unknown attention options \['kernel_size'\]"):
        forward_macs(v.depths, v.embed_dims, 224, kernel_size=3)

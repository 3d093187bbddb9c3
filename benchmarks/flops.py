"""Multiply-accumulates of a CvT forward pass, counted from the architecture."""

from keras_cvt.architectures import ATTENTION_OPTIONS, PATCH_PADDINGS, PATCH_SIZES, PATCH_STRIDES
from keras_cvt.layers import PROJECTIONS, conv_output_size


def forward_macs(depths, embed_dims, size, patch_sizes=PATCH_SIZES, patch_strides=PATCH_STRIDES,
                 patch_paddings=PATCH_PADDINGS, mlp_ratio=4.0, classes=1000, **attention_options):
    """MACs of one image of `size` (int or (height, width)) through a CvT; norms not counted.

    `attention_options` are `keras_cvt.CvT`'s (`keras_cvt.architectures.ATTENTION_OPTIONS`,
    whose defaults they take)."""
    unknown = attention_options.keys() - ATTENTION_OPTIONS.keys()
    if unknown:
        raise TypeError(f"unknown attention options {sorted(unknown)}: expected some of {list(ATTENTION_OPTIONS)}")
    options = {**ATTENTION_OPTIONS, **attention_options}
    kernel, padding = options["attention_kernel_size"], options["attention_padding"]
    height, width = (size, size) if isinstance(size, int) else size
    channels, total = 3, 0
    last = len(depths) - 1
    for i, (depth, dim) in enumerate(zip(depths, embed_dims)):
        k, s, p = patch_sizes[i], patch_strides[i], patch_paddings[i]
        height, width = conv_output_size(height, k, s, p), conv_output_size(width, k, s, p)
        total += height * width * dim * channels * k * k
        cls = 1 if i == last else 0
        # Tokens out of each projection's convolution (q, k, v), the class token not included.
        tokens = [
            conv_output_size(height, kernel, options[projection.stride], padding)
            * conv_output_size(width, kernel, options[projection.stride], padding)
            for projection in PROJECTIONS
        ]
        q_tokens, kv_tokens, _ = tokens
        for _ in range(depth):
            total += sum(tokens) * dim * kernel * kernel  # depthwise q, k, v
            total += sum(t + cls for t in tokens) * dim * dim  # proj_q, proj_k, proj_v
            total += 2 * (q_tokens + cls) * (kv_tokens + cls) * dim  # scores and weighted sum
            total += (q_tokens + cls) * dim * dim  # output projection
            total += 2 * (q_tokens + cls) * dim * int(dim * mlp_ratio)  # MLP
        channels = dim
    return total + channels * classes

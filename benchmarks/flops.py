"""Multiply-accumulates of a CvT forward pass, counted from the architecture."""

from keras_cvt.layers import conv_output_size


def forward_macs(depths, embed_dims, size, patch_sizes=(7, 3, 3), patch_strides=(4, 2, 2),
                 patch_paddings=(2, 1, 1), mlp_ratio=4.0, classes=1000):
    """MACs of one image of `size` (int or (height, width)) through a CvT; norms not counted."""
    height, width = (size, size) if isinstance(size, int) else size
    channels, total = 3, 0
    last = len(depths) - 1
    for i, (depth, dim) in enumerate(zip(depths, embed_dims)):
        k, s, p = patch_sizes[i], patch_strides[i], patch_paddings[i]
        height, width = conv_output_size(height, k, s, p), conv_output_size(width, k, s, p)
        total += height * width * dim * channels * k * k
        cls = 1 if i == last else 0
        kv_tokens = conv_output_size(height, 3, 2, 1) * conv_output_size(width, 3, 2, 1)
        q_tokens = height * width
        for _ in range(depth):
            total += (q_tokens + 2 * kv_tokens) * dim * 9  # depthwise q, k, v
            total += (q_tokens + cls + 2 * (kv_tokens + cls)) * dim * dim  # proj_q, proj_k, proj_v
            total += 2 * (q_tokens + cls) * (kv_tokens + cls) * dim  # scores and weighted sum
            total += (q_tokens + cls) * dim * dim  # output projection
            total += 2 * (q_tokens + cls) * dim * int(dim * mlp_ratio)  # MLP
        channels = dim
    return total + channels * classes

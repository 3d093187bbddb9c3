"""The names of checkpoint tensors: HuggingFace's keys rewritten into the original's, which the
rest of the converter speaks."""

import re

# HuggingFace's CvT names each original module differently but one to one; these rewrite a
# HuggingFace key into the original's. Order matters: `attention.output.dense` before
# `output.dense`.
_HF_TO_ORIGINAL = [
    (r"^(?:cvt\.)?encoder\.stages\.(\d+)\.embedding\.convolution_embeddings\.projection\.", r"stage\1.patch_embed.proj."),
    (r"^(?:cvt\.)?encoder\.stages\.(\d+)\.embedding\.convolution_embeddings\.normalization\.", r"stage\1.patch_embed.norm."),
    (r"^(?:cvt\.)?encoder\.stages\.(\d+)\.cls_token$", r"stage\1.cls_token"),
    (r"^(?:cvt\.)?encoder\.stages\.(\d+)\.layers\.(\d+)\.", r"stage\1.blocks.\2."),
    (r"\.attention\.attention\.convolution_projection_(q|k|v)\w*\.convolution_projection\.convolution\.", r".attn.conv_proj_\1.conv."),
    (r"\.attention\.attention\.convolution_projection_(q|k|v)\w*\.convolution_projection\.normalization\.", r".attn.conv_proj_\1.bn."),
    (r"\.attention\.attention\.projection_(q|k|v)\w*\.", r".attn.proj_\1."),
    (r"\.attention\.output\.dense\.", r".attn.proj."),
    (r"\.intermediate\.dense\.", r".mlp.fc1."),
    (r"\.output\.dense\.", r".mlp.fc2."),
    (r"\.layernorm_before\.", r".norm1."),
    (r"\.layernorm_after\.", r".norm2."),
    (r"^layernorm\.", r"norm."),
    (r"^classifier\.", r"head."),
]


def hf_to_original_key(key):
    """Rewrites a HuggingFace `CvtForImageClassification` key into the original's."""
    for pattern, replacement in _HF_TO_ORIGINAL:
        key = re.sub(pattern, replacement, key)
    return key

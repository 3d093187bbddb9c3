"""The published CvT variants, one record each: the architecture and its recipe defaults.

Everything that names a variant reads this table: the builders (`keras_cvt.CvT13`, ...), the
converter (which recognises a checkpoint's variant by its shapes), the training recipe, the
command lines and the README. Adding a variant is one entry here (and its checkpoints, if any,
one entry each in `keras_cvt.pretrained`).

Pure data: importing it imports nothing else.
"""

import dataclasses

# The original's convolutional token embeddings (kernel, stride, symmetric padding per stage).
PATCH_SIZES = (7, 3, 3)
PATCH_STRIDES = (4, 2, 2)
PATCH_PADDINGS = (2, 1, 1)
# The input height and width of a classifier built without `input_shape` or pretrained weights.
DEFAULT_SIZE = 224
# The original's attention options (KERNEL_QKV, STRIDE_Q, STRIDE_KV, PADDING_Q/KV, QKV_BIAS) in
# every published configuration, by the one name each has from the builder (`keras_cvt.CvT`)
# down to the attention layer (`keras_cvt.layers.ConvAttention`): their defaults.
ATTENTION_OPTIONS = {
    "attention_kernel_size": 3,
    "q_stride": 1,
    "kv_stride": 2,
    "attention_padding": 1,
    "qkv_bias": True,
}


@dataclasses.dataclass(frozen=True)
class Variant:
    """A published architecture (experiments/imagenet/cvt/*.yaml of the original).

    Attributes:
        name: the variant's name in `--model`, file names and `keras_cvt.pretrained`.
        builder: the name of its `keras.applications`-style builder in `keras_cvt`.
        depths, embed_dims, num_heads: blocks, token width and attention heads per stage.
        drop_path_rate: the stochastic depth rate of the last stage's final block (the
            original applies it to the last stage only, rising linearly from 0).
        weight_decay: the paper's AdamW weight decay for it (section 4.1).
        title: how papers and tables write its name.
        published_params: its parameters in millions as the CvT model zoos list them: the
            classifier's `count_params()` (BatchNorm moving statistics included), truncated
            to 0.1M (the paper's Table 3 gives them rounded to 1M); None for unpublished ones.
    """

    name: str
    builder: str
    depths: tuple
    embed_dims: tuple
    num_heads: tuple
    drop_path_rate: float
    weight_decay: float
    title: str
    published_params: float | None = None

    @property
    def config(self):
        """The architecture as `keras_cvt.CvT` arguments."""
        return {"depths": self.depths, "embed_dims": self.embed_dims, "num_heads": self.num_heads}


VARIANTS = {
    v.name: v
    for v in (
        Variant("cvt13", "CvT13", (1, 2, 10), (64, 192, 384), (1, 3, 6), 0.1, 0.05, "CvT-13", 20.0),
        Variant("cvt21", "CvT21", (1, 4, 16), (64, 192, 384), (1, 3, 6), 0.1, 0.1, "CvT-21", 31.6),
        Variant("cvtw24", "CvTW24", (2, 2, 20), (192, 768, 1024), (3, 12, 16), 0.3, 0.1, "CvT-W24", 277.3),
    )
}


def get(name):
    """The record of variant `name`, or ValueError listing the variants."""
    if name not in VARIANTS:
        raise ValueError(f"unknown CvT variant {name!r}: expected one of {sorted(VARIANTS)}")
    return VARIANTS[name]


def recognise(depths, embed_dims, mlp_ratio=4.0):
    """The variant with these stages (heads leave no trace in weights), or None."""
    return next(
        (
            v
            for v in VARIANTS.values()
            if v.depths == tuple(depths) and v.embed_dims == tuple(embed_dims) and mlp_ratio == 4.0
        ),
        None,
    )


# The variants' architectures and drop path rates as dicts, the form `keras_cvt.CvT` takes;
# kept for code written against keras_cvt 0.2 (`keras_cvt.MODEL_CONFIGS`).
MODEL_CONFIGS = {name: {**v.config, "drop_path_rate": v.drop_path_rate} for name, v in VARIANTS.items()}

"""CvT model builders with the `keras.applications` signature.

Reference: [CvT: Introducing Convolutions to Vision Transformers](https://arxiv.org/abs/2103.15808)
(Wu et al., ICCV 2021), ported from the original microsoft/CvT `cls_cvt.py`.
"""

import keras
from keras import layers

from keras_cvt import weights as weights_lib
from keras_cvt.pretrained import ALIASES, available_weights
from keras_cvt.layers import ClassToken, ConvEmbedding, CvTBlock, LayerNorm, conv_output_size
from keras_cvt.preprocessing import IMAGENET_MEAN, IMAGENET_STD

# The published variants (experiments/imagenet/cvt/*.yaml). The original applies stochastic
# depth to the last stage only, rising linearly from 0 over its blocks.
MODEL_CONFIGS = {
    "cvt13": {"depths": (1, 2, 10), "embed_dims": (64, 192, 384), "num_heads": (1, 3, 6), "drop_path_rate": 0.1},
    "cvt21": {"depths": (1, 4, 16), "embed_dims": (64, 192, 384), "num_heads": (1, 3, 6), "drop_path_rate": 0.1},
    "cvtw24": {"depths": (2, 2, 20), "embed_dims": (192, 768, 1024), "num_heads": (3, 12, 16), "drop_path_rate": 0.3},
}
PATCH_SIZES = (7, 3, 3)
PATCH_STRIDES = (4, 2, 2)
PATCH_PADDINGS = (2, 1, 1)
DEFAULT_SIZE = 224
POOLING_MODES = (None, "avg", "max", "token")

BASE_DOCSTRING = """Instantiates the {name} architecture.

Reference: [CvT: Introducing Convolutions to Vision Transformers](
https://arxiv.org/abs/2103.15808) (ICCV 2021). The model is the original one layer for
layer (QuickGELU, LayerNorm eps 1e-5, convolutional projections with BatchNorm), so the
original checkpoints, converted with `python -m weights_conversion`, reproduce its logits.

CvT has no position embedding: the same weights accept any input height and width, and the
classifier reads the class token, so `include_top=True` also works with
`input_shape=(None, None, 3)`.

Each stage's output map is the layer `stage{{i}}_output` (i = 0, 1, 2; NHWC at strides 4, 8
and 16), so a feature pyramid of a model built with `include_top=False` is
`keras.Model(model.input, [model.get_layer(f"stage{{i}}_output").output for i in range(3)])`.
The classifier and `pooling="token"` read only the class token, so their models have no
`stage2_output` layer (Keras leaves out the last map, which nothing uses).

Args:
    include_top: whether to include the classifier (final LayerNorm on the class token and
        a Dense layer named `predictions`).
    weights: `None` (random initialization), the path to a `.weights.h5` file, such as
        one written by `python -m weights_conversion`, or the name of an original checkpoint
        (see `keras_cvt.available_weights()`):
        {names}.
        A name downloads the checkpoint from the HuggingFace hub on first use (`HF_ENDPOINT`
        picks a mirror, `HF_HUB_OFFLINE=1` forbids it), verifies and converts it, and keeps
        the converted file in `$KERAS_HOME/models/keras_cvt` (`~/.keras` by default).
    input_tensor: optional Keras tensor (output of `keras.Input()`) to use as image input.
    input_shape: optional `(height, width, channels)`; height and width may be `None`.
        Defaults to `({default_size}, {default_size}, 3)` with the classifier (the pretrained
        checkpoint's resolution with a named `weights`: 384 for the `-384` names) and to
        `(None, None, 3)` without it.
    pooling: output of the model when `include_top=False`:
        - `None`: the last stage's feature map, `(batch, height / 16, width / 16, {dim})`;
        - `"avg"` / `"max"`: that map globally average / max pooled, `(batch, {dim})`;
        - `"token"`: the class token after the final LayerNorm, `(batch, {dim})`: the
          features the pretrained classifier was trained on.
    classes: number of classes of the classifier, when `include_top=True`.
    classifier_activation: activation of the classifier (`None` returns logits). It is
        computed in float32 under mixed precision.
    include_preprocessing: `True` takes RGB pixels in [0, 255] and normalises them with the
        ImageNet mean and standard deviation inside the model; `False` takes input already
        normalised that way (see `keras_cvt.preprocess_input`), like the original model.
    drop_path_rate: stochastic depth rate of the last stage's final block (the original's
        default is {drop_path_rate}).
    name: name of the model.

Returns:
    A `keras.Model`.
"""


def CvT(
    depths,
    embed_dims,
    num_heads,
    mlp_ratio=4.0,
    patch_sizes=PATCH_SIZES,
    patch_strides=PATCH_STRIDES,
    patch_paddings=PATCH_PADDINGS,
    drop_path_rate=0.0,
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    include_preprocessing=True,
    default_size=DEFAULT_SIZE,
    name="cvt",
):
    """Instantiates a CvT of any widths, depths and heads.

    The published variants are `CvT13`, `CvT21` and `CvTW24`; this builder serves research
    variants without a copy of the code. Stages are built alike: a convolutional token
    embedding, then transformer blocks with convolutional projection attention; the last stage
    carries the class token.

    Args:
        depths: blocks per stage.
        embed_dims: token width per stage.
        num_heads: attention heads per stage (each must divide the stage's width).
        mlp_ratio: MLP hidden width relative to the token width.
        patch_sizes, patch_strides, patch_paddings: kernel, stride and symmetric padding of
            each stage's convolutional token embedding.
        drop_path_rate: stochastic depth rate of the last block, rising linearly from 0 over
            the last stage's blocks (the other stages use none, as in the original).
        default_size: input height and width when `include_top=True` and no `input_shape`.
        include_top, weights, input_tensor, input_shape, pooling, classes,
        classifier_activation, include_preprocessing, name: as in `CvT13`, except that
            `weights` takes no pretrained names (they belong to the variant builders).

    Returns:
        A `keras.Model`.
    """
    stage_args = [depths, embed_dims, num_heads, patch_sizes, patch_strides, patch_paddings]
    if len({len(a) for a in stage_args}) != 1:
        raise ValueError(
            "`depths`, `embed_dims`, `num_heads`, `patch_sizes`, `patch_strides` and "
            f"`patch_paddings` need one entry per stage, got {stage_args}"
        )
    if pooling not in POOLING_MODES:
        raise ValueError(f"`pooling` must be one of {POOLING_MODES}, got pooling={pooling!r}")
    if include_top and (not isinstance(classes, int) or classes < 1):
        raise ValueError(f"`classes` must be a positive integer, got classes={classes!r}")
    weights_path = weights_lib.resolve(weights)
    if weights_path is not None and include_top:
        weights_lib.check_classes(weights_path, classes)

    inputs, x = _image_input(input_tensor, input_shape, include_top, default_size)
    _check_input(x.shape, include_preprocessing, patch_sizes, patch_strides, patch_paddings)
    if include_preprocessing:
        x = layers.Normalization(
            mean=[255.0 * m for m in IMAGENET_MEAN],
            variance=[(255.0 * s) ** 2 for s in IMAGENET_STD],
            name="preprocessing",
        )(x)

    last = len(depths) - 1
    for i in range(len(depths)):
        x = ConvEmbedding(
            embed_dims[i], patch_sizes[i], patch_strides[i], patch_paddings[i], name=f"stage{i}_embedding"
        )(x)
        if i == last:
            x = [x, ClassToken(embed_dims[i], name=f"stage{i}_cls_token")(x)]
        for j in range(depths[i]):
            rate = drop_path_rate * j / (depths[i] - 1) if i == last and depths[i] > 1 else 0.0
            x = CvTBlock(
                embed_dims[i],
                num_heads[i],
                mlp_ratio=mlp_ratio,
                drop_path_rate=rate,
                with_cls_token=i == last,
                name=f"stage{i}_block{j}",
            )(x)
        if i == last:
            x, cls_token = x
        x = layers.Identity(name=f"stage{i}_output")(x)

    if include_top or pooling == "token":
        cls_token = layers.Reshape((embed_dims[last],), name="cls_token_flatten")(cls_token)
        cls_token = LayerNorm(name="head_norm")(cls_token)
    if include_top:
        x = layers.Dense(
            classes,
            activation=classifier_activation,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            dtype="float32",
            name="predictions",
        )(cls_token)
    elif pooling == "token":
        x = cls_token
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)

    model = keras.Model(inputs, x, name=name)
    if weights_path is not None:
        weights_lib.load(model, weights_path)
    return model


def _image_input(input_tensor, input_shape, include_top, default_size):
    """Returns (model inputs, image tensor) following keras.applications' conventions."""
    if input_shape is None:
        if input_tensor is not None:
            input_shape = tuple(input_tensor.shape[1:])
        elif include_top:
            input_shape = (default_size, default_size, 3)
        else:
            input_shape = (None, None, 3)
    input_shape = tuple(input_shape)
    if len(input_shape) != 3:
        raise ValueError(
            "`input_shape` must be (height, width, channels), channels last, "
            f"got input_shape={input_shape}"
        )
    if input_tensor is None:
        image = keras.Input(shape=input_shape, name="images")
        return image, image
    if not keras.backend.is_keras_tensor(input_tensor):
        image = keras.Input(tensor=input_tensor, shape=input_shape, name="images")
        return image, image
    sources = keras.utils.get_source_inputs(input_tensor)
    return (sources[0] if len(sources) == 1 else sources), input_tensor


def _check_input(shape, include_preprocessing, patch_sizes, patch_strides, patch_paddings):
    """Rejects channel counts and sizes the model cannot take, before any layer is built."""
    if len(shape) != 4:
        raise ValueError(f"`input_tensor` must be a 4D NHWC image batch, got shape {shape}")
    channels = shape[-1]
    if channels is None:
        raise ValueError("`input_shape` must give the number of channels, got None")
    if include_preprocessing and channels != 3:
        raise ValueError(
            "`include_preprocessing=True` normalises RGB images, so the input needs 3 "
            f"channels, got input_shape channels={channels}; pass include_preprocessing=False "
            "for other channel counts"
        )
    for axis, axis_name in ((1, "height"), (2, "width")):
        size = shape[axis]
        for kernel, stride, padding in zip(patch_sizes, patch_strides, patch_paddings):
            size = conv_output_size(size, kernel, stride, padding)
            if size is not None and size < 1:
                raise ValueError(
                    f"`input_shape` {axis_name} {shape[axis]} is too small: the token "
                    f"embeddings (kernels {tuple(patch_sizes)}, strides {tuple(patch_strides)}) "
                    "leave no tokens"
                )


def _check_pretrained(entry, include_top, classes, input_tensor, input_shape):
    """Refuses arguments that the pretrained weights named by `entry` cannot serve."""
    if include_top and classes != entry.classes:
        raise ValueError(
            f"`weights`={entry.name!r} has a {entry.classes}-class ImageNet classifier, got "
            f"classes={classes}; pass include_top=False and add your own head for other classes"
        )
    shape = input_shape if input_shape is not None else getattr(input_tensor, "shape", None)
    channels = tuple(shape)[-1] if shape is not None and len(shape) else None
    if channels is not None and channels != 3:
        raise ValueError(
            f"`weights`={entry.name!r} was trained on RGB images, so the input needs 3 channels, "
            f"got {channels}"
        )


def _names(variant):
    names = [repr(w["weights"]) for w in available_weights(variant)]
    names += [f"{alias!r} (= {target!r})" for (v, alias), target in ALIASES.items() if v == variant]
    return ", ".join(names)


def _variant(variant, model_name, default_name):
    config = MODEL_CONFIGS[variant]

    def builder(
        include_top=True,
        weights=None,
        input_tensor=None,
        input_shape=None,
        pooling=None,
        classes=1000,
        classifier_activation="softmax",
        include_preprocessing=True,
        drop_path_rate=config["drop_path_rate"],
        name=default_name,
    ):
        default_size = DEFAULT_SIZE
        entry = weights_lib.pretrained_entry(weights, variant)
        if entry is not None:
            # Checked before the download, which can take minutes.
            _check_pretrained(entry, include_top, classes, input_tensor, input_shape)
            default_size = entry.resolution
            weights = weights_lib.resolve(weights, variant)
        return CvT(
            config["depths"],
            config["embed_dims"],
            config["num_heads"],
            drop_path_rate=drop_path_rate,
            default_size=default_size,
            include_top=include_top,
            weights=weights,
            input_tensor=input_tensor,
            input_shape=input_shape,
            pooling=pooling,
            classes=classes,
            classifier_activation=classifier_activation,
            include_preprocessing=include_preprocessing,
            name=name,
        )

    builder.__name__ = builder.__qualname__ = model_name
    builder.__doc__ = BASE_DOCSTRING.format(
        name=model_name,
        names=_names(variant),
        default_size=DEFAULT_SIZE,
        dim=config["embed_dims"][-1],
        drop_path_rate=config["drop_path_rate"],
    )
    return builder


CvT13 = _variant("cvt13", "CvT13", "cvt13")
CvT21 = _variant("cvt21", "CvT21", "cvt21")
CvTW24 = _variant("cvtw24", "CvTW24", "cvtw24")

BUILDERS = {"cvt13": CvT13, "cvt21": CvT21, "cvtw24": CvTW24}

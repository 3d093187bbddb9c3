"""CvT model builders with the `keras.applications` signature.

Reference: [CvT: Introducing Convolutions to Vision Transformers](https://arxiv.org/abs/2103.15808)
(Wu et al., ICCV 2021), ported from the original microsoft/CvT `cls_cvt.py`.
"""

import numbers
import warnings

import keras
import numpy as np
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
        a Dense layer named `predictions`); a bool.
    weights: `None` (random initialization), the path to a `.weights.h5` file, such as
        one written by `python -m weights_conversion`, or the name of an original checkpoint
        (see `keras_cvt.available_weights()`):
        {names}.
        A name downloads the checkpoint from the HuggingFace hub on first use (`HF_ENDPOINT`
        picks a mirror, `HF_HUB_OFFLINE=1` forbids it), verifies and converts it, and keeps
        the converted file in `$KERAS_HOME/models/keras_cvt` (`~/.keras` by default).
    input_tensor: optional Keras tensor (output of `keras.Input()`) to use as image input.
    input_shape: optional `(height, width, channels)`, channels last whatever
        `keras.config.image_data_format()` says; height and width may be `None`.
        Defaults to `({default_size}, {default_size}, 3)` with the classifier (the pretrained
        checkpoint's resolution with a named `weights`: 384 for the `-384` names) and to
        `(None, None, 3)` without it. With `input_tensor`, it may be left out; if given, it
        must agree with the tensor's shape.
    pooling: output of the model when `include_top=False`:
        - `None`: the last stage's feature map, `(batch, height / 16, width / 16, {dim})`;
        - `"avg"` / `"max"`: that map globally average / max pooled, `(batch, {dim})`;
        - `"token"`: the class token after the final LayerNorm, `(batch, {dim})`: the
          features the pretrained classifier was trained on.
    classes: number of classes of the classifier, when `include_top=True`.
    classifier_activation: activation of the classifier (`None` returns logits). It is
        computed in float32 under mixed precision.
    include_preprocessing: `True` takes RGB pixels in [0, 255] and normalises them with the
        ImageNet mean and standard deviation inside the model (so `keras_cvt.preprocess_input`
        is a pass-through, as for keras' ConvNeXt); `False` takes input already normalised
        that way (see `keras_cvt.imagenet_normalize`), like the original model. For an input
        of other than 3 channels there is nothing to normalise with: the model takes it as
        it is, with a warning, as keras' models do.
    drop_path_rate: stochastic depth rate of the last stage's final block, in [0, 1) (the
        original's default is {drop_path_rate}).
    name: name of the model.

Returns:
    A `keras.Model`.

Raises:
    TypeError: an argument of the wrong type (`include_top="no"`, `input_shape=224`, ...).
    ValueError: an argument out of range or contradicting another, named in the message.
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
    depths, embed_dims, num_heads, patch_sizes, patch_strides, patch_paddings = _check_stages(
        depths, embed_dims, num_heads, patch_sizes, patch_strides, patch_paddings
    )
    mlp_ratio = _check_mlp_ratio(mlp_ratio, embed_dims)
    default_size = _check_integer("default_size", default_size, 1)
    _check_arguments(
        include_top, include_preprocessing, input_tensor, input_shape, pooling, classes,
        classifier_activation, drop_path_rate, name,
    )
    include_top, include_preprocessing = bool(include_top), bool(include_preprocessing)
    classes, drop_path_rate = int(classes), float(drop_path_rate)
    weights_path = weights_lib.resolve(weights)
    if weights_path is not None and include_top:
        weights_lib.check_classes(weights_path, classes)

    inputs, x = _image_input(input_tensor, input_shape, include_top, default_size)
    include_preprocessing = _check_input(
        x.shape, include_preprocessing, patch_sizes, patch_strides, patch_paddings
    )
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
        # The maps are NHWC whatever keras.config.image_data_format() says.
        x = layers.GlobalAveragePooling2D(data_format="channels_last", name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(data_format="channels_last", name="max_pool")(x)

    model = keras.Model(inputs, x, name=name)
    if weights_path is not None:
        weights_lib.load(model, weights_path)
    return model


def _image_input(input_tensor, input_shape, include_top, default_size):
    """Returns (model inputs, image tensor) following keras.applications' conventions."""
    if input_tensor is not None:
        sources = keras.utils.get_source_inputs(input_tensor)
        return (sources[0] if len(sources) == 1 else sources), input_tensor
    if input_shape is None:
        input_shape = (default_size, default_size, 3) if include_top else (None, None, 3)
    image = keras.Input(shape=tuple(input_shape), name="images")
    return image, image


def _check_input(shape, include_preprocessing, patch_sizes, patch_strides, patch_paddings):
    """Rejects sizes the model cannot take, before any layer is built; returns whether the
    model normalises its input (only RGB input can be)."""
    channels = shape[-1]
    if include_preprocessing and channels != 3:
        # keras.applications' models (ConvNeXt, EfficientNetV2) leave out their built-in
        # normalisation for a channel count it does not fit, and build.
        warnings.warn(
            "`include_preprocessing=True` normalises RGB images with the ImageNet mean and "
            f"standard deviation, but the input has {channels} channels: the model takes it as "
            "it is. Pass include_preprocessing=False to say so.",
            stacklevel=3,
        )
        include_preprocessing = False
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
    return include_preprocessing


def _is_integer(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _check_integer(name, value, minimum):
    """`value` as a Python int if it is an integer (NumPy's too, not bool) >= minimum."""
    if not _is_integer(value):
        raise TypeError(f"`{name}` must be an integer, got {name}={value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {name}={value!r}")
    return int(value)


def _check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be True or False, got {name}={value!r} ({type(value).__name__})")


# (argument, smallest value, what one entry is)
_STAGE_ARGUMENTS = (
    ("depths", 1, "blocks"),
    ("embed_dims", 1, "token width"),
    ("num_heads", 1, "attention heads"),
    ("patch_sizes", 1, "embedding kernel size"),
    ("patch_strides", 1, "embedding stride"),
    ("patch_paddings", 0, "embedding padding"),
)


def _check_stages(*values):
    """The per-stage arguments as tuples of Python ints, each entry checked."""
    checked = []
    for (name, minimum, meaning), value in zip(_STAGE_ARGUMENTS, values):
        if isinstance(value, np.ndarray) and value.ndim == 1:
            value = value.tolist()
        if not isinstance(value, (list, tuple)):
            raise TypeError(
                f"`{name}` must be a list or tuple with one entry per stage ({meaning}), got "
                f"{name}={value!r} ({type(value).__name__})"
            )
        for stage, entry in enumerate(value):
            if not _is_integer(entry):
                raise TypeError(
                    f"`{name}` must hold integers, got {name}={tuple(value)!r}: stage {stage} has "
                    f"{entry!r} ({type(entry).__name__})"
                )
            if entry < minimum:
                raise ValueError(
                    f"`{name}` must hold integers >= {minimum} ({meaning} per stage), got "
                    f"{name}={tuple(value)!r}: stage {stage} has {entry}"
                )
        checked.append(tuple(int(entry) for entry in value))
    if len({len(c) for c in checked}) != 1 or not checked[0]:
        raise ValueError(
            "`depths`, `embed_dims`, `num_heads`, `patch_sizes`, `patch_strides` and "
            f"`patch_paddings` need one entry per stage (at least one stage), got {checked}"
        )
    embed_dims, num_heads = checked[1], checked[2]
    for stage, (dim, heads) in enumerate(zip(embed_dims, num_heads)):
        if dim % heads:
            raise ValueError(
                f"`num_heads` must divide `embed_dims` stage by stage, got num_heads={num_heads}, "
                f"embed_dims={embed_dims}: stage {stage} has {heads} heads for width {dim}"
            )
    return checked


def _check_mlp_ratio(mlp_ratio, embed_dims):
    if not _is_real(mlp_ratio):
        raise TypeError(f"`mlp_ratio` must be a number, got mlp_ratio={mlp_ratio!r} ({type(mlp_ratio).__name__})")
    if not (mlp_ratio > 0 and np.isfinite(mlp_ratio) and int(min(embed_dims) * mlp_ratio) >= 1):
        raise ValueError(
            "`mlp_ratio` must be a finite number > 0 that leaves every stage's MLP at least one "
            f"unit (width x mlp_ratio >= 1; the narrowest stage is {min(embed_dims)} wide), got "
            f"mlp_ratio={mlp_ratio!r}"
        )
    return float(mlp_ratio)


def _check_arguments(
    include_top, include_preprocessing, input_tensor, input_shape, pooling, classes,
    classifier_activation, drop_path_rate, name,
):
    """Checks the arguments that the variant builders share with `CvT`, before any weights are
    downloaded or layers built."""
    _check_bool("include_top", include_top)
    _check_bool("include_preprocessing", include_preprocessing)
    _check_integer("classes", classes, 1)
    if not (isinstance(pooling, str) and pooling in POOLING_MODES or pooling is None):
        raise ValueError(f"`pooling` must be one of {POOLING_MODES}, got pooling={pooling!r}")
    try:
        keras.activations.get(classifier_activation)
    except (ValueError, TypeError) as error:
        raise ValueError(
            "`classifier_activation` must be None, the name of a Keras activation (such as "
            f"'softmax') or a callable, got classifier_activation={classifier_activation!r}"
        ) from error
    if not _is_real(drop_path_rate):
        raise TypeError(
            f"`drop_path_rate` must be a number, got drop_path_rate={drop_path_rate!r} "
            f"({type(drop_path_rate).__name__})"
        )
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"`drop_path_rate` must be in [0, 1), got drop_path_rate={drop_path_rate!r}")
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a string, got name={name!r} ({type(name).__name__})")
    if not name or "/" in name:
        raise ValueError(f"`name` must be a non-empty string without '/', got name={name!r}")
    if input_shape is not None:
        _check_input_shape(input_shape)
    if input_tensor is not None:
        _check_input_tensor(input_tensor, input_shape)


def _check_input_shape(input_shape):
    if not isinstance(input_shape, (list, tuple)):
        raise TypeError(
            "`input_shape` must be a tuple (height, width, channels), channels last, got "
            f"input_shape={input_shape!r} ({type(input_shape).__name__})"
        )
    if len(input_shape) != 3:
        raise ValueError(
            "`input_shape` must be (height, width, channels), channels last, "
            f"got input_shape={tuple(input_shape)}"
        )
    if input_shape[-1] is None:
        raise ValueError(f"`input_shape` must give the number of channels, got input_shape={tuple(input_shape)}")
    for axis_name, size in zip(("height", "width", "channels"), input_shape):
        if size is None:
            continue
        if not _is_integer(size):
            raise TypeError(
                f"`input_shape` {axis_name} must be a positive integer (or None for height and "
                f"width), got input_shape={tuple(input_shape)!r}"
            )
        if size < 1:
            raise ValueError(
                f"`input_shape` {axis_name} must be a positive integer, got input_shape={tuple(input_shape)!r}"
            )


def _check_input_tensor(input_tensor, input_shape):
    if not keras.backend.is_keras_tensor(input_tensor):
        raise TypeError(
            "`input_tensor` must be a Keras tensor (the output of `keras.Input()` or of a layer "
            f"applied to one), got {type(input_tensor).__name__}"
        )
    shape = tuple(input_tensor.shape)
    if len(shape) != 4:
        raise ValueError(f"`input_tensor` must be a 4D NHWC image batch, got shape {shape}")
    if shape[-1] is None:
        raise ValueError(f"`input_tensor` must have a known number of channels, got shape {shape}")
    # keras.applications silently ignores an input_shape beside a Keras tensor; a contradiction
    # is refused here instead (None in input_shape leaves that axis to the tensor).
    if input_shape is not None and any(s is not None and s != t for s, t in zip(input_shape, shape[1:])):
        raise ValueError(
            f"`input_shape`={tuple(input_shape)} contradicts `input_tensor`, whose shape is "
            f"{shape[1:]} (batch left out); leave out input_shape to use the tensor's"
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
        _check_arguments(
            include_top, include_preprocessing, input_tensor, input_shape, pooling, classes,
            classifier_activation, drop_path_rate, name,
        )
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

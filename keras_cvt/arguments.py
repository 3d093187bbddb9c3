"""Checks of the builders' arguments: each wrong type or value refused with a message naming
the argument, before anything is downloaded or built."""

import numbers

import keras
import numpy as np

POOLING_MODES = (None, "avg", "max", "token")


class _DefaultClasses(int):
    """The `classes` default: 1000, as keras.applications' (and shown so in signatures), told
    apart from an explicit `classes=1000` by identity, so that weights carrying a classifier
    can give their own class count when `classes` is left out."""

    def __repr__(self):
        return "1000"


DEFAULT_CLASSES = _DefaultClasses(1000)


def classes_for(classes, stored, source):
    """The classifier width of a model with `include_top=True` and weights whose classifier has
    `stored` classes (None: no classifier): `stored` when `classes` was left at its default,
    else `classes`, which must agree with it."""
    if stored is None:
        raise ValueError(f"`weights`={source!r} has no classifier; build with include_top=False to use it")
    if classes is DEFAULT_CLASSES:
        return stored
    if classes != stored:
        raise ValueError(
            f"`weights`={source!r} has a {stored}-class classifier, got classes={classes}; leave "
            f"`classes` out (or pass classes={stored}), or pass include_top=False and add your own "
            "head for other classes"
        )
    return int(classes)


def is_integer(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_integer(name, value, minimum):
    """`value` as a Python int if it is an integer (NumPy's too, not bool) >= minimum."""
    if not is_integer(value):
        raise TypeError(f"`{name}` must be an integer, got {name}={value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {name}={value!r}")
    return int(value)


def check_bool(name, value):
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


def check_stages(*values):
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
            if not is_integer(entry):
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


def check_attention(attention_kernel_size, q_stride, kv_stride, attention_padding, qkv_bias):
    """The attention options (the original's KERNEL_QKV, STRIDE_Q, STRIDE_KV, PADDING_Q/KV and
    QKV_BIAS) as Python ints and a bool.

    Every block adds its attention's output to its input, token for token, so the query
    projection must keep the map's size: `q_stride` 1 and an odd `attention_kernel_size` with
    `attention_padding` (kernel - 1) / 2. Keys and values take the same kernel and padding, at
    any `kv_stride`.
    """
    kernel_size = check_integer("attention_kernel_size", attention_kernel_size, 1)
    q_stride = check_integer("q_stride", q_stride, 1)
    kv_stride = check_integer("kv_stride", kv_stride, 1)
    padding = check_integer("attention_padding", attention_padding, 0)
    check_bool("qkv_bias", qkv_bias)
    if q_stride != 1:
        raise ValueError(
            "`q_stride` must be 1: each block adds the attention's output to its input token for "
            f"token, so the query projection must keep the map's size, got q_stride={q_stride!r}"
        )
    if 2 * padding != kernel_size - 1:
        raise ValueError(
            "`attention_padding` must be (attention_kernel_size - 1) / 2, with an odd "
            "`attention_kernel_size`: the query projection must keep the map's size, got "
            f"attention_kernel_size={kernel_size}, attention_padding={padding}"
        )
    return kernel_size, q_stride, kv_stride, padding, bool(qkv_bias)


def check_mlp_ratio(mlp_ratio, embed_dims):
    if not is_real(mlp_ratio):
        raise TypeError(f"`mlp_ratio` must be a number, got mlp_ratio={mlp_ratio!r} ({type(mlp_ratio).__name__})")
    if not (mlp_ratio > 0 and np.isfinite(mlp_ratio) and int(min(embed_dims) * mlp_ratio) >= 1):
        raise ValueError(
            "`mlp_ratio` must be a finite number > 0 that leaves every stage's MLP at least one "
            f"unit (width x mlp_ratio >= 1; the narrowest stage is {min(embed_dims)} wide), got "
            f"mlp_ratio={mlp_ratio!r}"
        )
    return float(mlp_ratio)


def check_arguments(
    include_top, include_preprocessing, input_tensor, input_shape, pooling, classes,
    classifier_activation, drop_path_rate, name,
):
    """Checks the arguments that the variant builders share with `CvT`, before any weights are
    downloaded or layers built."""
    check_bool("include_top", include_top)
    check_bool("include_preprocessing", include_preprocessing)
    check_integer("classes", classes, 1)
    if not (isinstance(pooling, str) and pooling in POOLING_MODES or pooling is None):
        raise ValueError(f"`pooling` must be one of {POOLING_MODES}, got pooling={pooling!r}")
    try:
        keras.activations.get(classifier_activation)
    except (ValueError, TypeError) as error:
        raise ValueError(
            "`classifier_activation` must be None, the name of a Keras activation (such as "
            f"'softmax') or a callable, got classifier_activation={classifier_activation!r}"
        ) from error
    if not is_real(drop_path_rate):
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
        if not is_integer(size):
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

"""The published variants' builders, `CvT13`, `CvT21` and `CvTW24`, with their pretrained weights.

Each is a `def` here, a signature over its record in `keras_cvt.architectures` (its
checkpoints' records are in `keras_cvt.pretrained`): the record gives the architecture, the
defaults and the docstring. A new variant is an entry there and a builder of six lines here,
which `_builder` holds to the record.
"""

import inspect

from keras_cvt import arguments, architectures, hf, pretrained, sources
from keras_cvt.architectures import DEFAULT_SIZE, VARIANTS
from keras_cvt.builder import CvT

BASE_DOCSTRING = """Instantiates the {name} architecture.

Reference: [CvT: Introducing Convolutions to Vision Transformers](
https://arxiv.org/abs/2103.15808) (ICCV 2021). The model is the original one layer for
layer (QuickGELU, LayerNorm eps 1e-5, convolutional projections with BatchNorm), so the
original checkpoints, converted with `python -m keras_cvt.conversion`, reproduce its logits.

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
        one written by `python -m keras_cvt.conversion`, or the name of an original checkpoint
        (see `keras_cvt.available_weights()`):
        {names}.
        A name downloads the checkpoint from the HuggingFace hub on first use, by
        huggingface_hub into its cache (`HF_ENDPOINT` picks a mirror, `HF_HUB_OFFLINE=1`
        forbids it, `HF_TOKEN` reads private repos), verifies and converts it, and keeps
        the converted file in `$KERAS_HOME/models/keras_cvt` (`~/.keras` by default).
        `"hf://owner/repo[@revision]"` takes a transformers `CvtForImageClassification` repo
        of this architecture (`keras_cvt.from_hf` takes any).
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
    classes: number of classes of the classifier, when `include_top=True`. Left at its
        default, that of the classifier in `weights` (a `hf://` repo's, a file's), else 1000;
        given, it must agree with it.
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


def _check_channels(weights, input_tensor, input_shape):
    """Refuses an input that pretrained weights (trained on RGB images) cannot serve."""
    shape = input_shape if input_shape is not None else getattr(input_tensor, "shape", None)
    channels = tuple(shape)[-1] if shape is not None and len(shape) else None
    if channels is not None and channels != 3:
        raise ValueError(
            f"`weights`={weights.source!r} was trained on RGB images, so the input needs 3 channels, "
            f"got {channels}"
        )


def _names(variant):
    names = [repr(w["weights"]) for w in pretrained.available_weights(variant)]
    names += [f"{alias!r} (= {target!r})" for (v, alias), target in pretrained.ALIASES.items() if v == variant]
    return ", ".join(names)


def _build(
    record,
    include_top,
    weights,
    input_tensor,
    input_shape,
    pooling,
    classes,
    classifier_activation,
    include_preprocessing,
    drop_path_rate,
    name,
):
    """The model of variant `record` with a builder's arguments (the body every builder shares)."""
    default_size = DEFAULT_SIZE
    arguments.check_arguments(
        include_top, include_preprocessing, input_tensor, input_shape, pooling, classes,
        classifier_activation, drop_path_rate, name,
    )
    resolved = sources.resolve_weights(weights, record.name)
    if resolved.path is None and resolved.source is not None:
        # Checked before the download, which can take minutes.
        if include_top:
            classes = arguments.classes_for(classes, resolved.classes, resolved.source)
        _check_channels(resolved, input_tensor, input_shape)
    if resolved.entry is not None:
        default_size = resolved.transform.size
    weights = resolved.file()
    return CvT(
        **record.config,
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


# {variant name: builder}, filled by `_builder` below.
BUILDERS = {}


def _builder(variant):
    """Registers the decorated function as the builder of `variant` in `BUILDERS` and gives it
    the docstring of its record; refuses a function that does not carry the record's builder
    name, or whose defaults contradict the record."""
    record = architectures.get(variant)

    def register(builder):
        defaults = inspect.signature(builder).parameters
        if (
            builder.__name__ != record.builder
            or defaults["name"].default != record.name
            or defaults["drop_path_rate"].default != record.drop_path_rate
        ):
            raise ValueError(f"{builder.__name__} does not match the record of {variant!r}: {record}")
        builder.__doc__ = BASE_DOCSTRING.format(
            name=record.builder,
            names=_names(record.name),
            default_size=DEFAULT_SIZE,
            dim=record.embed_dims[-1],
            drop_path_rate=record.drop_path_rate,
        )
        BUILDERS[variant] = builder
        return builder

    return register


# Each builder passes its arguments on by `locals()`: they are all it has (as in timm's
# `@register_model` functions), and the signature stays the one place that names them.
@_builder("cvt13")
def CvT13(
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=arguments.DEFAULT_CLASSES,
    classifier_activation="softmax",
    include_preprocessing=True,
    drop_path_rate=VARIANTS["cvt13"].drop_path_rate,
    name="cvt13",
):
    return _build(VARIANTS["cvt13"], **locals())


@_builder("cvt21")
def CvT21(
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=arguments.DEFAULT_CLASSES,
    classifier_activation="softmax",
    include_preprocessing=True,
    drop_path_rate=VARIANTS["cvt21"].drop_path_rate,
    name="cvt21",
):
    return _build(VARIANTS["cvt21"], **locals())


@_builder("cvtw24")
def CvTW24(
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=arguments.DEFAULT_CLASSES,
    classifier_activation="softmax",
    include_preprocessing=True,
    drop_path_rate=VARIANTS["cvtw24"].drop_path_rate,
    name="cvtw24",
):
    return _build(VARIANTS["cvtw24"], **locals())


def from_hf(
    source,
    include_top=True,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classifier_activation="softmax",
    include_preprocessing=True,
    name=None,
):
    """A CvT of any architecture with the weights of a HuggingFace hub repo.

    Args:
        source: `"hf://owner/repo"` or `"hf://owner/repo@revision"`: a transformers
            `CvtForImageClassification` (or `CvtModel`) repo. `HF_TOKEN` reads private and
            gated repos; `HF_ENDPOINT`, `HF_HUB_OFFLINE` mean what they mean to huggingface_hub.
        include_top, input_tensor, input_shape, pooling, classifier_activation,
        include_preprocessing, name: as in `keras_cvt.CvT13`; the classifier has the repo's
            classes (`keras_cvt.hf.labels(source)` names them).

    Returns:
        A `keras.Model`.

    Raises:
        ValueError: not an `hf://` source, a config CvT cannot express, weights that do not
            fit it.
        keras_cvt.downloads.HubError: the repo or its files could not be fetched.
    """
    hf.parse(source)
    resolved = sources.resolve_weights(source)
    if include_top and resolved.classes is None:
        raise ValueError(f"{source} has no classifier (a CvtModel): pass include_top=False")
    return CvT(
        **resolved.config,
        include_top=include_top,
        # The converter held the tensors against config.json's architecture before building
        # anything; the repo's labels must name the classifier's classes.
        weights=resolved.file(),
        classes=resolved.classes if include_top else arguments.DEFAULT_CLASSES,
        input_tensor=input_tensor,
        input_shape=input_shape,
        pooling=pooling,
        classifier_activation=classifier_activation,
        include_preprocessing=include_preprocessing,
        name=name or resolved.variant or "cvt",
    )


__all__ = ["BUILDERS", "from_hf", *(builder.__name__ for builder in BUILDERS.values())]

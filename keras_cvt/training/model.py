"""The model to train: a CvT from scratch, or fine-tuned from weights with a new classifier."""

import keras

from keras_cvt import pretrained, sources
from keras_cvt.builder import CvT
from keras_cvt.variants import BUILDERS


def build_model(architecture, num_classes, image_size, weights=None, drop_path_rate=None, name=None):
    """A CvT classifier returning logits, from scratch or fine-tuned from `weights`.

    Args:
        architecture: a variant name (`keras_cvt.architectures.VARIANTS`), or a dict of `keras_cvt.CvT` arguments
            (`depths`, `embed_dims`, `num_heads`, ...) for a custom architecture.
        num_classes: classes of the classifier.
        image_size: input height and width.
        weights: None, a `.weights.h5` path, or a pretrained name of the variant (e.g.
            `"imagenet"`). When its classifier has another number of classes (or none), the
            backbone is loaded without it and a new classifier is added, initialised like the
            original's (truncated normal, std 0.02).
        drop_path_rate: stochastic depth rate; None keeps the builder's (the original's).

    The model has the layers of the builder's `include_top=True` model, so its weights files
    load back with `CvT13(weights=path, classes=num_classes)` (or `keras_cvt.CvT(...)`).
    """
    kwargs = {"input_shape": (image_size, image_size, 3), "classifier_activation": None}
    if drop_path_rate is not None:
        kwargs["drop_path_rate"] = drop_path_rate
    if name is not None:
        kwargs["name"] = name
    if isinstance(architecture, str):
        if architecture not in BUILDERS:
            raise ValueError(
                f"`architecture` must be one of {sorted(BUILDERS)} or a dict, got {architecture!r}"
            )
        builder = BUILDERS[architecture]
    else:
        config = dict(architecture)

        def builder(**more):
            return CvT(**config, **more)

    stored = head_classes(architecture, weights)
    if weights is None or stored == num_classes:
        return builder(weights=weights, classes=num_classes, **kwargs)
    backbone = builder(include_top=False, pooling="token", weights=weights, **kwargs)
    logits = keras.layers.Dense(
        num_classes,
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        dtype="float32",
        name="predictions",
    )(backbone.output)
    return keras.Model(backbone.input, logits, name=backbone.name)


def head_classes(architecture, weights):
    """Classes of the classifier in `weights` (None without weights or without a classifier)."""
    if weights is not None and pretrained.is_pretrained_name(weights) and not isinstance(architecture, str):
        raise ValueError(f"pretrained `weights`={weights!r} need a variant name as `architecture`")
    return sources.resolve_weights(weights, architecture if isinstance(architecture, str) else None).classes

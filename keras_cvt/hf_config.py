"""A HuggingFace `CvtConfig` (a repo's `config.json`) read into `keras_cvt.CvT` arguments and labels.

transformers' CvT describes each stage by lists (`depth`, `embed_dim`, `num_heads`,
`patch_sizes`, `patch_stride`, `patch_padding`, ...); the options keras_cvt's model has no
counterpart for (another q/k/v projection, kernel or stride, no q/k/v bias, a class token
before the last stage, per-stage MLP ratios) are refused by name rather than ignored.

Pure data: importing it imports nothing but `keras_cvt.architectures`.
"""

import dataclasses

from keras_cvt import architectures

# The convolutional projection that keras_cvt's ConvAttention implements (the original's
# defaults, and every Microsoft checkpoint's).
_FIXED = {
    "qkv_projection_method": "dw_bn",
    "kernel_qkv": 3,
    "padding_kv": 1,
    "stride_kv": 2,
    "padding_q": 1,
    "stride_q": 1,
    "qkv_bias": True,
}
_STAGES = {
    "depth": "depths",
    "embed_dim": "embed_dims",
    "num_heads": "num_heads",
    "patch_sizes": "patch_sizes",
    "patch_stride": "patch_strides",
    "patch_padding": "patch_paddings",
}


@dataclasses.dataclass(frozen=True)
class HubModel:
    """What a `CvtForImageClassification` config says about the model.

    Attributes:
        config: the `keras_cvt.CvT` arguments (depths, embed_dims, num_heads, mlp_ratio,
            patch_sizes, patch_strides, patch_paddings, drop_path_rate).
        labels: the class names in class order (`id2label`), or None without a classifier.
        variant: the published variant with this architecture (`"cvt13"`...), or None.
    """

    config: dict
    labels: tuple | None
    variant: str | None

    @property
    def classes(self):
        return None if self.labels is None else len(self.labels)


def read(config, source="config.json"):
    """The `HubModel` of a parsed `config.json`, or ValueError naming `source` and the field."""
    if not isinstance(config, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(config).__name__}")
    model_type = config.get("model_type")
    if model_type != "cvt":
        raise ValueError(
            f"{source}: model_type is {model_type!r}, expected 'cvt' (a transformers CvtModel or "
            "CvtForImageClassification repo)"
        )
    stages = {}
    for field, argument in _STAGES.items():
        if field not in config:
            raise ValueError(f"{source}: the field {field!r} is missing")
        stages[argument] = _integers(config[field], field, source)
    count = len(stages["depths"])
    for field, argument in _STAGES.items():
        if len(stages[argument]) != count:
            raise ValueError(f"{source}: {count} stages in 'depth' but {len(stages[argument])} in {field!r}")
    _check_channels(config, source)
    _check_fixed(config, count, source)
    cls_token = config.get("cls_token", [False] * (count - 1) + [True])
    if list(cls_token) != [False] * (count - 1) + [True]:
        raise ValueError(
            f"{source}: cls_token={cls_token!r}: keras_cvt's CvT has a class token in the last stage " "only"
        )
    ratios = config.get("mlp_ratio", [4.0] * count)
    ratios = ratios if isinstance(ratios, list) else [ratios] * count
    if len(set(ratios)) != 1:
        raise ValueError(
            f"{source}: mlp_ratio={ratios!r}: keras_cvt's CvT takes one MLP ratio for all stages"
        )
    drop_path = config.get("drop_path_rate", [0.0] * count)
    drop_path = drop_path if isinstance(drop_path, list) else [drop_path] * count
    if any(drop_path[:-1]):
        raise ValueError(
            f"{source}: drop_path_rate={drop_path!r}: keras_cvt's CvT applies stochastic depth to the "
            "last stage only"
        )
    arguments = {**stages, "mlp_ratio": float(ratios[0]), "drop_path_rate": float(drop_path[-1])}
    variant = architectures.recognise(stages["depths"], stages["embed_dims"], arguments["mlp_ratio"])
    if variant is not None and (
        variant.num_heads != stages["num_heads"]
        or (stages["patch_sizes"], stages["patch_strides"], stages["patch_paddings"])
        != (architectures.PATCH_SIZES, architectures.PATCH_STRIDES, architectures.PATCH_PADDINGS)
    ):
        variant = None
    return HubModel(arguments, _labels(config, source), None if variant is None else variant.name)


def _integers(values, field, source):
    if not isinstance(values, list) or not values or not all(isinstance(v, int) and v >= 0 for v in values):
        raise ValueError(f"{source}: {field} must be a list of integers, one per stage, got {values!r}")
    return tuple(values)


def _check_channels(config, source):
    channels = config.get("num_channels", 3)
    if channels != 3:
        raise ValueError(
            f"{source}: num_channels={channels!r}: keras_cvt loads RGB (3-channel) checkpoints only"
        )


def _check_fixed(config, count, source):
    for field, expected in _FIXED.items():
        values = config.get(field, [expected] * count)
        values = values if isinstance(values, list) else [values]
        if any(value != expected for value in values):
            raise ValueError(
                f"{source}: {field}={values!r}: keras_cvt's CvT implements {field}={expected!r} in "
                "every stage (the original CvT's convolutional projection) and nothing else"
            )


def _labels(config, source):
    """The class names in order from `id2label`, or None for a model without a classifier."""
    architectures_ = config.get("architectures") or []
    id2label = config.get("id2label")
    if architectures_ and "CvtForImageClassification" not in architectures_:
        return None
    if not isinstance(id2label, dict) or not id2label:
        raise ValueError(f"{source}: a CvtForImageClassification config needs id2label, got {id2label!r}")
    try:
        ids = sorted(int(key) for key in id2label)
    except ValueError as error:
        raise ValueError(f"{source}: the keys of id2label must be class numbers: {error}") from error
    if ids != list(range(len(ids))):
        raise ValueError(f"{source}: id2label must number the classes 0 to {len(ids) - 1} without gaps")
    return tuple(str(id2label[str(i)] if str(i) in id2label else id2label[i]) for i in ids)

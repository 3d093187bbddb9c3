"""A HuggingFace `CvtConfig` (a repo's `config.json`) read into `keras_cvt.CvT` arguments and labels.

transformers' CvT describes each stage by lists (`depth`, `embed_dim`, `num_heads`,
`patch_sizes`, `patch_stride`, `patch_padding`, ...). Its attention fields (`kernel_qkv`,
`padding_q`/`padding_kv`, `stride_q`/`stride_kv`, `qkv_bias`) become `keras_cvt.CvT`'s
attention options (`keras_cvt.architectures.ATTENTION_OPTIONS`), so any kernel, key/value
stride or missing q/k/v bias that the converter reads off a checkpoint loads by `hf://` too.
What keras_cvt's model cannot express is refused by field name rather than ignored: another
projection than the convolutional one (`qkv_projection_method` "avg" or "linear"), attention
options that differ between stages, a query projection that changes the map's size, different
paddings for q and k/v, a class token before the last stage, per-stage MLP ratios.

Pure data: importing it imports nothing but `keras_cvt.architectures`.
"""

import dataclasses

from keras_cvt import architectures

# The attention projection keras_cvt's ConvAttention implements: a depthwise convolution with
# BatchNorm (the original's, and every Microsoft checkpoint's).
_PROJECTION_METHOD = "dw_bn"
# CvtConfig's attention fields (one value per stage) -> the `keras_cvt.CvT` option each sets.
_ATTENTION_FIELDS = {
    "kernel_qkv": "attention_kernel_size",
    "padding_q": "attention_padding",
    "padding_kv": "attention_padding",
    "stride_q": "q_stride",
    "stride_kv": "kv_stride",
    "qkv_bias": "qkv_bias",
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
            patch_sizes, patch_strides, patch_paddings, drop_path_rate, and the attention options
            that differ from the defaults).
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
    attention = _attention_options(config, count, source)
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
    arguments.update(attention)
    variant = architectures.recognise(stages["depths"], stages["embed_dims"], arguments["mlp_ratio"])
    if variant is not None and (
        attention
        or variant.num_heads != stages["num_heads"]
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


def _attention_options(config, count, source):
    """The `keras_cvt.CvT` attention options that the config's attention fields set, those that
    differ from the defaults only (a published variant's config gives none)."""
    methods = _per_stage(config, "qkv_projection_method", _PROJECTION_METHOD, count, source)
    if any(method != _PROJECTION_METHOD for method in methods):
        raise ValueError(
            f"{source}: qkv_projection_method={methods!r}: keras_cvt's CvT implements the "
            f"convolutional projection {_PROJECTION_METHOD!r} only"
        )
    values = {}
    for field, option in _ATTENTION_FIELDS.items():
        default = architectures.ATTENTION_OPTIONS[option]
        stages = _per_stage(config, field, default, count, source)
        kind = bool if isinstance(default, bool) else int
        if not all(type(value) is kind and (kind is bool or value >= 0) for value in stages):
            expected = "true or false" if kind is bool else "integers >= 0"
            raise ValueError(f"{source}: {field}={stages!r}: expected {expected}, one per stage")
        if len(set(stages)) != 1:
            raise ValueError(
                f"{source}: {field}={stages!r}: keras_cvt's CvT takes one {option} for all stages"
            )
        values[field] = stages[0]
    kernel = values["kernel_qkv"]
    if kernel < 1:
        raise ValueError(f"{source}: kernel_qkv={kernel!r}: expected a kernel size of at least 1")
    if values["stride_q"] != 1 or 2 * values["padding_q"] != kernel - 1:
        raise ValueError(
            f"{source}: stride_q={values['stride_q']!r}, padding_q={values['padding_q']!r} with "
            f"kernel_qkv={kernel!r}: each block adds the attention's output to its input token for "
            "token, so keras_cvt's CvT needs the query projection to keep the map's size (stride_q 1, "
            "padding_q (kernel_qkv - 1) / 2)"
        )
    if values["padding_kv"] != values["padding_q"]:
        raise ValueError(
            f"{source}: padding_kv={values['padding_kv']!r} but padding_q={values['padding_q']!r}: "
            "keras_cvt's CvT pads the query, key and value maps alike"
        )
    if values["stride_kv"] < 1:
        raise ValueError(f"{source}: stride_kv={values['stride_kv']!r}: expected a stride of at least 1")
    options = {_ATTENTION_FIELDS[field]: value for field, value in values.items()}
    return {name: value for name, value in options.items() if value != architectures.ATTENTION_OPTIONS[name]}


def _per_stage(config, field, default, count, source):
    """The config's `field` as a list of one value per stage (a single value is every stage's)."""
    values = config.get(field, [default] * count)
    values = values if isinstance(values, list) else [values] * count
    if len(values) != count:
        raise ValueError(f"{source}: {count} stages in 'depth' but {len(values)} in {field!r}")
    return values


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

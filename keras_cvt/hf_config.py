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

Every size is bounded by `keras_cvt.declared` before anything else reads it.
"""

import dataclasses

from keras_cvt import architectures, declared
from keras_cvt.arguments import is_real

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
_REQUIRED = object()
# CvtConfig's per-stage lists -> (the `keras_cvt.CvT` argument, the default when absent).
_STAGES = {
    "depth": ("depths", _REQUIRED),
    "embed_dim": ("embed_dims", _REQUIRED),
    "num_heads": ("num_heads", _REQUIRED),
    "patch_sizes": ("patch_sizes", list(architectures.PATCH_SIZES)),
    "patch_stride": ("patch_strides", list(architectures.PATCH_STRIDES)),
    "patch_padding": ("patch_paddings", list(architectures.PATCH_PADDINGS)),
}
# `keras_cvt.CvT` argument -> config.json's field, for `keras_cvt.declared`'s messages.
_FIELD_NAMES = {
    **{argument: field for field, (argument, _) in _STAGES.items()},
    **{option: field for field, option in _ATTENTION_FIELDS.items() if field != "padding_kv"},
    "classes": "the number of id2label entries",
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
    """The `HubModel` of a parsed `config.json`, or ValueError naming `source` and the field.

    Every size it declares is bounded by `keras_cvt.declared.check_architecture` (the classes
    counted from `id2label`), so a refusal comes before any weight is downloaded.
    """
    if not isinstance(config, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(config).__name__}")
    model_type = config.get("model_type")
    if model_type != "cvt":
        raise ValueError(
            f"{source}: model_type is {model_type!r}, expected 'cvt' (a transformers CvtModel or "
            "CvtForImageClassification repo)"
        )
    _check_channels(config, source)
    # transformers' CvtConfig defaults for the embeddings' lists, which it does not write when unchanged.
    stages = {argument: config.get(field, default) for field, (argument, default) in _STAGES.items()}
    stages = {argument: value for argument, value in stages.items() if value is not _REQUIRED}
    lists = {}
    methods = config.get("qkv_projection_method", _PROJECTION_METHOD)
    if any(method != _PROJECTION_METHOD for method in (methods if isinstance(methods, list) else [methods])):
        raise ValueError(
            f"{source}: qkv_projection_method={methods!r}: keras_cvt's CvT "
            f"implements the convolutional projection {_PROJECTION_METHOD!r} only"
        )
    _one_value(config, "qkv_projection_method", _PROJECTION_METHOD, source, lists)  # kept for its length
    values = {
        field: _one_value(config, field, architectures.ATTENTION_OPTIONS[option], source, lists)
        for field, option in _ATTENTION_FIELDS.items()
    }
    if not isinstance(values["qkv_bias"], bool):
        raise ValueError(f"{source}: qkv_bias={config['qkv_bias']!r}: expected true or false, one per stage")
    ratio = _one_value(config, "mlp_ratio", 4.0, source, lists)
    drop_path = config.get("drop_path_rate", 0.0)
    lists["drop_path_rate"] = drop_path
    drop_path = drop_path if isinstance(drop_path, list) else [drop_path]
    if not drop_path or not all(is_real(rate) and 0 <= rate < 1 for rate in drop_path):
        raise ValueError(f"{source}: drop_path_rate must be numbers from 0 to 1 (exclusive), got {lists['drop_path_rate']!r}")
    if any(drop_path[:-1]):
        raise ValueError(
            f"{source}: drop_path_rate={drop_path!r}: keras_cvt's CvT applies stochastic depth to the "
            "last stage only"
        )
    labels = _labels(config, source)
    options = {_ATTENTION_FIELDS[field]: value for field, value in values.items() if field != "padding_kv"}
    declared.check_architecture(
        {**stages, **options, "mlp_ratio": ratio},
        source,
        fields=_FIELD_NAMES,
        classes=None if labels is None else len(labels),
    )
    count = len(stages["depths"])
    # Sizes now bounded: the per-stage lists must have the stages' count.
    for field, per_stage in lists.items():
        if isinstance(per_stage, list) and len(per_stage) != count:
            raise ValueError(f"{source}: {count} stages in 'depth' but {len(per_stage)} in {field!r}")
    cls_token = config.get("cls_token", [False] * (count - 1) + [True])
    if cls_token != [False] * (count - 1) + [True]:
        raise ValueError(
            f"{source}: cls_token={cls_token!r}: keras_cvt's CvT has a class token in the last stage only"
        )
    _check_query(values, source)
    stages = {argument: tuple(value) for argument, value in stages.items()}
    arguments = {**stages, "mlp_ratio": float(ratio), "drop_path_rate": float(drop_path[-1])}
    attention = {name: value for name, value in options.items() if value != architectures.ATTENTION_OPTIONS[name]}
    arguments.update(attention)
    variant = architectures.recognise(stages["depths"], stages["embed_dims"], arguments["mlp_ratio"])
    if variant is not None and (
        attention
        or variant.num_heads != stages["num_heads"]
        or (stages["patch_sizes"], stages["patch_strides"], stages["patch_paddings"])
        != (architectures.PATCH_SIZES, architectures.PATCH_STRIDES, architectures.PATCH_PADDINGS)
    ):
        variant = None
    return HubModel(arguments, labels, None if variant is None else variant.name)


def _check_channels(config, source):
    channels = config.get("num_channels", 3)
    if channels != 3:
        raise ValueError(
            f"{source}: num_channels={channels!r}: keras_cvt loads RGB (3-channel) checkpoints only"
        )


def _one_value(config, field, default, source, lists):
    """The one value of a field that transformers gives per stage (a single value is every
    stage's); the list is kept in `lists` for its length to be checked against the stages'."""
    values = config.get(field, default)
    if not isinstance(values, list):
        return values
    lists[field] = values
    if not values:
        raise ValueError(f"{source}: {field} is an empty list, expected one value per stage")
    if any(type(value) is not type(values[0]) or value != values[0] for value in values):
        option = _ATTENTION_FIELDS.get(field, field)
        raise ValueError(f"{source}: {field}={values!r}: keras_cvt's CvT takes one {option} for all stages")
    return values[0]


def _check_query(values, source):
    """Refuses attention that keras_cvt's blocks cannot add to their input (sizes already bounded)."""
    kernel = values["kernel_qkv"]
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


def _labels(config, source):
    """The class names in order from `id2label`, or None for a model without a classifier."""
    architectures_ = config.get("architectures") or []
    id2label = config.get("id2label")
    if architectures_ and "CvtForImageClassification" not in architectures_:
        return None
    if not isinstance(id2label, dict) or not id2label:
        raise ValueError(f"{source}: a CvtForImageClassification config needs id2label, got {id2label!r}")
    if len(id2label) > declared.MAX_CLASSES:
        raise ValueError(f"{source}: id2label has {len(id2label):,} entries, more than the {declared.MAX_CLASSES:,} classes a CvT may have here")
    names = {}
    for key, name in id2label.items():
        number = _class_number(key)
        if number is None:
            raise ValueError(f"{source}: id2label key {key!r} is not a class number (0, 1, 2, ... without leading zeros)")
        if not isinstance(name, str):
            raise ValueError(f"{source}: id2label[{key!r}] must be a class name (a string), got {name!r}")
        names[number] = name
    if sorted(names) != list(range(len(id2label))):
        raise ValueError(f"{source}: id2label must number the classes 0 to {len(id2label) - 1} without gaps")
    return tuple(names[i] for i in range(len(names)))


def _class_number(key):
    """The class number `key` writes plainly ("3"; an int in a config made in Python), or None."""
    if isinstance(key, int) and not isinstance(key, bool):
        return key if key >= 0 else None
    if isinstance(key, str) and key.isascii() and key.isdigit() and (key == "0" or not key.startswith("0")):
        return int(key)
    return None

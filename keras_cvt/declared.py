"""Sizes that files declare, checked before anything is read whole, downloaded, built or converted.

A `config.json` of a hub repo, a keras-hub preset's configs or an image converter's settings
are a few bytes that can ask for a model of any size: a one-line edit (`"depth": [1, 2,
100000]`, `mlp_ratio: 1e12`) would otherwise be discovered gigabytes later, inside TensorFlow.
Everything here is arithmetic on the declared values, so a refusal costs nothing; the limits
are far above every published CvT (the largest, CvT-W24, has 277 million parameters).
"""

import json
import math
import os

from keras_cvt.arguments import is_integer, is_real
from keras_cvt.conversion.mapping import expected_shapes

# A config.json of an ImageNet-22k classifier, labels included, is about 1 MB.
MAX_JSON_BYTES = 16 * 2**20
MAX_JSON_DEPTH = 32
MAX_STAGES = 8
MAX_BLOCKS_PER_STAGE = 256
MAX_WIDTH = 16384
MAX_KERNEL = 63
MAX_STRIDE = 64
MAX_MLP_RATIO = 64.0
MAX_CLASSES = 1_000_000
# 4 GB of float32 weights, 3.6 times CvT-W24's.
MAX_PARAMETERS = 1_000_000_000
# An image converter's output side: 16 times the published 256 / 384 inputs.
MAX_IMAGE_SIDE = 4096
MIN_CROP_RATIO = 0.1


def read_json(path, source):
    """The parsed JSON of `path`, read only when no larger than `MAX_JSON_BYTES` and nested no
    deeper than `MAX_JSON_DEPTH`; otherwise ValueError naming `source`."""
    size = os.stat(path).st_size
    if size > MAX_JSON_BYTES:
        raise ValueError(f"{source}: {size:,} bytes, more than the {MAX_JSON_BYTES:,} a config may have")
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except RecursionError:
        raise ValueError(f"{source}: nested deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{source}: not a JSON file: {error}") from error
    if _depth(value) > MAX_JSON_DEPTH:
        raise ValueError(f"{source}: nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _depth(value):
    depth, level = 0, [value]
    while level:
        depth += 1
        level = [c for v in level if isinstance(v, (dict, list)) for c in (v.values() if isinstance(v, dict) else v)]
    return depth


# (the `keras_cvt.CvT` argument, smallest, largest) of each per-stage list.
_STAGE_LIMITS = (
    ("depths", 1, MAX_BLOCKS_PER_STAGE),
    ("embed_dims", 1, MAX_WIDTH),
    ("num_heads", 1, MAX_WIDTH),
    ("patch_sizes", 1, MAX_KERNEL),
    ("patch_strides", 1, MAX_STRIDE),
    ("patch_paddings", 0, MAX_KERNEL),
)
# (argument, smallest, largest) of each single integer.
_OPTION_LIMITS = (
    ("attention_kernel_size", 1, MAX_KERNEL),
    ("q_stride", 1, MAX_STRIDE),
    ("kv_stride", 1, MAX_STRIDE),
    ("attention_padding", 0, MAX_KERNEL),
)


def check_architecture(config, source, fields=None, classes=None):
    """Refuses a declared architecture that is malformed or beyond the limits, by its field.

    Args:
        config: `keras_cvt.CvT` arguments as a file declared them (`depths`, `embed_dims`,
            `num_heads`, and optionally the patch lists, `mlp_ratio` and attention options).
        source: the file, for the message (`"config.json of hf://owner/repo"`).
        fields: {argument: the file's name for it}, where the file names them otherwise
            (HuggingFace's `depth` for `depths`).
        classes: the classifier's classes, or None without a classifier.

    Returns:
        The number of weights the model would hold.
    """
    fields = fields or {}

    def refuse(argument, expected, value):
        raise ValueError(f"{source}: {fields.get(argument, argument)} must be {expected}, got {value!r}")

    for argument in ("depths", "embed_dims", "num_heads"):
        if argument not in config:
            raise ValueError(f"{source}: the field {fields.get(argument, argument)!r} is missing")
    stages = None
    for argument, smallest, largest in _STAGE_LIMITS:
        if argument not in config:
            continue
        values = config[argument]
        if not isinstance(values, (list, tuple)) or not 1 <= len(values) <= MAX_STAGES:
            refuse(argument, f"a list of 1 to {MAX_STAGES} integers, one per stage", values)
        if not all(is_integer(v) and smallest <= v <= largest for v in values):
            refuse(argument, f"a list of integers from {smallest} to {largest:,}", values)
        if stages is not None and len(values) != stages:
            refuse(argument, f"a list of {stages} entries, one per stage", values)
        stages = len(values)
    for argument, smallest, largest in _OPTION_LIMITS:
        value = config.get(argument, smallest)
        if not (is_integer(value) and smallest <= value <= largest):
            refuse(argument, f"an integer from {smallest} to {largest}", value)
    ratio = config.get("mlp_ratio", 4.0)
    if not (is_real(ratio) and 0 < ratio <= MAX_MLP_RATIO and math.isfinite(ratio)):
        refuse("mlp_ratio", f"a number > 0 and <= {MAX_MLP_RATIO:g}", ratio)
    for stage, (dim, heads) in enumerate(zip(config["embed_dims"], config["num_heads"])):
        if dim % heads:
            refuse("num_heads", f"numbers of heads that divide the widths ({config['embed_dims']!r})", config["num_heads"])
    if classes is not None and not (is_integer(classes) and 1 <= classes <= MAX_CLASSES):
        refuse("classes", f"an integer from 1 to {MAX_CLASSES:,}", classes)
    parameters = sum(math.prod(s) for s in expected_shapes({**config, "classes": classes or 1}).values())
    if parameters > MAX_PARAMETERS:
        raise ValueError(
            f"{source}: the declared architecture has {parameters:,} weights, more than the "
            f"{MAX_PARAMETERS:,} a CvT may have here ({4 * parameters / 2**30:.1f} GB of float32)"
        )
    return parameters


def check_image_size(image_size, crop_ratio, source):
    """Refuses an image converter's output size or crop ratio beyond the limits, by field."""
    if not (
        isinstance(image_size, (list, tuple))
        and len(image_size) == 2
        and all(is_integer(s) and 1 <= s <= MAX_IMAGE_SIDE for s in image_size)
    ):
        raise ValueError(
            f"{source}: image_size must be (height, width), each from 1 to {MAX_IMAGE_SIDE}, got {image_size!r}"
        )
    if crop_ratio is not None and not (is_real(crop_ratio) and MIN_CROP_RATIO <= crop_ratio <= 1):
        raise ValueError(f"{source}: crop_ratio must be a number from {MIN_CROP_RATIO} to 1, got {crop_ratio!r}")

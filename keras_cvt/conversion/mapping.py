"""Which original checkpoint tensor goes into which Keras variable, and how it is laid out."""

import itertools
import re

import numpy as np

from keras_cvt import architectures
from keras_cvt.architectures import PATCH_PADDINGS, PATCH_SIZES, PATCH_STRIDES
from keras_cvt.layers import ATTENTION_KERNEL_SIZE, PROJECTIONS, QKV_BIAS, QUERY

# Keras array = np.transpose(PyTorch array, permutation).
LINEAR = (1, 0)  # (out, in) -> (in, out)
CONV = (2, 3, 1, 0)  # (out, in, kh, kw) -> (kh, kw, in, out)
DEPTHWISE = (2, 3, 0, 1)  # (C, 1, kh, kw) -> (kh, kw, C, 1)
# Bookkeeping of PyTorch's BatchNorm, with no Keras counterpart.
IGNORED = re.compile(r"\.num_batches_tracked$")


def _dense(prefix, layer):
    mapping = {f"{prefix}.weight": (layer.kernel, LINEAR)}
    if layer.bias is not None:  # the q/k/v projections with qkv_bias=False have none
        mapping[f"{prefix}.bias"] = (layer.bias, None)
    return mapping


def _norm(prefix, layer):
    return {f"{prefix}.weight": (layer.gamma, None), f"{prefix}.bias": (layer.beta, None)}


def variable_map(model):
    """Maps every original key to `(Keras variable, permutation or None)` for a CvT model.

    `model` is built by `keras_cvt.CvT` with `include_top=True`.
    """
    mapping = {}
    stage = 0
    while True:
        try:
            embedding = model.get_layer(f"stage{stage}_embedding")
        except ValueError:
            break
        prefix = f"stage{stage}"
        mapping[f"{prefix}.patch_embed.proj.weight"] = (embedding.proj.kernel, CONV)
        mapping[f"{prefix}.patch_embed.proj.bias"] = (embedding.proj.bias, None)
        mapping.update(_norm(f"{prefix}.patch_embed.norm", embedding.norm))
        block_index = 0
        while True:
            try:
                block = model.get_layer(f"stage{stage}_block{block_index}")
            except ValueError:
                break
            b = f"{prefix}.blocks.{block_index}"
            mapping.update(_norm(f"{b}.norm1", block.norm1))
            mapping.update(_norm(f"{b}.norm2", block.norm2))
            attn = block.attn
            for projection in PROJECTIONS:
                conv, bn = getattr(attn, projection.conv), getattr(attn, projection.batch_norm)
                original = f"{b}.attn.{projection.conv}"
                mapping[f"{original}.conv.weight"] = (conv.kernel, DEPTHWISE)
                mapping[f"{original}.bn.weight"] = (bn.gamma, None)
                mapping[f"{original}.bn.bias"] = (bn.beta, None)
                mapping[f"{original}.bn.running_mean"] = (bn.moving_mean, None)
                mapping[f"{original}.bn.running_var"] = (bn.moving_variance, None)
                mapping.update(_dense(f"{b}.attn.{projection.linear}", getattr(attn, projection.linear)))
            mapping.update(_dense(f"{b}.attn.proj", attn.proj))
            mapping.update(_dense(f"{b}.mlp.fc1", block.fc1))
            mapping.update(_dense(f"{b}.mlp.fc2", block.fc2))
            block_index += 1
        stage += 1
    last = stage - 1
    mapping[f"stage{last}.cls_token"] = (model.get_layer(f"stage{last}_cls_token").token, None)
    mapping.update(_norm("norm", model.get_layer("head_norm")))
    mapping.update(_dense("head", model.get_layer("predictions")))
    return mapping


def torch_shape(variable, permutation):
    """The PyTorch shape whose permutation gives the Keras variable's shape."""
    shape = tuple(variable.shape)
    if permutation is None:
        return shape
    torch = [0] * len(shape)
    for keras_axis, torch_axis in enumerate(permutation):
        torch[torch_axis] = shape[keras_axis]
    return tuple(torch)


def _blocks_per_stage(state, stage):
    """How many blocks the tensors give stage `stage`, refusing gaps in their numbering.

    A block count is read off the highest block index; a file naming block 99999999 would
    otherwise make the converter expect (and list as missing) 3 billion tensors.
    """
    present = {int(m.group(1)) for k in state if (m := re.match(rf"stage{stage}\.blocks\.(\d+)\.", k))}
    depth = max(present, default=-1) + 1
    if depth == 0:
        # keras_cvt.CvT refuses an empty stage too, but in terms of its arguments.
        raise ValueError(f"stage{stage} has no blocks: no tensors stage{stage}.blocks.0.*")
    if len(present) != depth:
        # Lazily: the gap may be a hundred million blocks wide.
        first = list(itertools.islice((j for j in range(depth) if j not in present), 5))
        more = depth - len(present) - len(first)
        shown = ", ".join(map(str, first)) + (f" and {more} more" if more else "")
        raise ValueError(
            f"stage{stage} numbers its blocks up to {depth - 1} but holds {len(present)} of them "
            f"(no tensors for block {shown})"
        )
    return depth


def _check_rank(state, key, axes):
    """The shape of `state[key]`, refused unless it has the named `axes`, none of them empty."""
    shape = tuple(int(n) for n in state[key].shape)
    if len(shape) != len(axes) or 0 in shape:
        raise ValueError(f"{key} is {shape}, expected a non-empty {len(axes)}-D tensor ({', '.join(axes)})")
    return shape


def infer_config(state):
    """Reads the architecture (and the published variant's name, if any) off the tensors.

    Only shapes are read, so this costs nothing whatever the tensors claim; `expected_shapes`
    then says what the architecture needs, to be compared before any model is built.

    Attention heads leave no trace in the weights; they are taken from the matching published
    variant, or set to 1 per stage, which gives the same weight file for any head count.
    Embedding strides and paddings leave none either; the original's scheme is assumed
    (stride 4 / padding 2 in the first stage, 2 / 1 after), again without effect on the file.
    """
    stages = sorted(
        int(m.group(1)) for k in state if (m := re.fullmatch(r"stage(\d+)\.patch_embed\.proj\.weight", k))
    )
    if not stages or stages != list(range(len(stages))):
        raise ValueError(
            "not a CvT checkpoint: expected tensors stage0.patch_embed.proj.weight, "
            f"stage1..., found stages {stages}"
        )
    kernels = [_check_rank(state, f"stage{i}.patch_embed.proj.weight", ("out", "in", "kh", "kw")) for i in stages]
    embed_dims = tuple(shape[0] for shape in kernels)
    patch_sizes = tuple(shape[-1] for shape in kernels)
    depths = tuple(_blocks_per_stage(state, i) for i in stages)
    if "head.weight" not in state:
        raise ValueError("not a CvT classifier checkpoint: head.weight is missing")
    classes = _check_rank(state, "head.weight", ("classes", "width"))[0]
    if "stage0.blocks.0.mlp.fc1.weight" in state:
        hidden, width = _check_rank(state, "stage0.blocks.0.mlp.fc1.weight", ("hidden", "width"))
        mlp_ratio = hidden / width
    else:
        mlp_ratio = 4.0
    attention = _attention_options(state)
    variant = None if attention else architectures.recognise(depths, embed_dims, mlp_ratio)
    num_heads = variant.num_heads if variant else (1,) * len(stages)
    config = {
        "depths": depths,
        "embed_dims": embed_dims,
        "num_heads": num_heads,
        "mlp_ratio": mlp_ratio,
        "patch_sizes": patch_sizes,
        # Per stage, so that checkpoints with other than three stages build at all.
        "patch_strides": tuple(PATCH_STRIDES[min(i, 1)] for i in stages),
        "patch_paddings": tuple(PATCH_PADDINGS[min(i, 1)] for i in stages),
        "classes": classes,
        **attention,
    }
    return (variant.name if variant else None), config


def _attention_options(state):
    """The attention options that the tensors show to differ from the defaults (which every
    published checkpoint has): the depthwise kernel size, and whether q/k/v have biases."""
    options = {}
    key = f"stage0.blocks.0.attn.{QUERY.conv}.conv.weight"
    if key in state:
        kernel_size = _check_rank(state, key, ("channels", "one", "kh", "kw"))[-1]
        if kernel_size != ATTENTION_KERNEL_SIZE:
            # The padding that keeps the map's size, as `keras_cvt.CvT` requires.
            options.update(attention_kernel_size=kernel_size, attention_padding=(kernel_size - 1) // 2)
    linear = f"stage0.blocks.0.attn.{QUERY.linear}"
    if f"{linear}.weight" in state and f"{linear}.bias" not in state:
        options["qkv_bias"] = False
    return options


def expected_shapes(config, in_channels=3):
    """{original key: PyTorch shape} of every tensor the model of `config` loads.

    Worked out from the `keras_cvt.CvT` arguments alone (what `variable_map` gives for the
    built model, as tests check), so a checkpoint can be held against its architecture before
    a model, which allocates every variable, is built.
    """
    depths, embed_dims = config["depths"], config["embed_dims"]
    patch_sizes = config.get("patch_sizes", PATCH_SIZES)
    mlp_ratio = config.get("mlp_ratio", 4.0)
    kernel_size = config.get("attention_kernel_size", ATTENTION_KERNEL_SIZE)
    qkv_bias = config.get("qkv_bias", QKV_BIAS)
    shapes = {}
    width = in_channels
    for i, (depth, dim) in enumerate(zip(depths, embed_dims)):
        embed = f"stage{i}.patch_embed"
        shapes[f"{embed}.proj.weight"] = (dim, width, patch_sizes[i], patch_sizes[i])
        for name in ("proj.bias", "norm.weight", "norm.bias"):
            shapes[f"{embed}.{name}"] = (dim,)
        hidden = int(dim * mlp_ratio)
        for j in range(depth):
            b = f"stage{i}.blocks.{j}"
            for name in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "attn.proj.bias"):
                shapes[f"{b}.{name}"] = (dim,)
            shapes[f"{b}.attn.proj.weight"] = (dim, dim)
            for projection in PROJECTIONS:
                original = f"{b}.attn.{projection.conv}"
                shapes[f"{original}.conv.weight"] = (dim, 1, kernel_size, kernel_size)
                for name in ("weight", "bias", "running_mean", "running_var"):
                    shapes[f"{original}.bn.{name}"] = (dim,)
                shapes[f"{b}.attn.{projection.linear}.weight"] = (dim, dim)
                if qkv_bias:
                    shapes[f"{b}.attn.{projection.linear}.bias"] = (dim,)
            shapes[f"{b}.mlp.fc1.weight"] = (hidden, dim)
            shapes[f"{b}.mlp.fc1.bias"] = (hidden,)
            shapes[f"{b}.mlp.fc2.weight"] = (dim, hidden)
            shapes[f"{b}.mlp.fc2.bias"] = (dim,)
        width = dim
    shapes[f"stage{len(depths) - 1}.cls_token"] = (1, 1, width)
    shapes["norm.weight"] = shapes["norm.bias"] = (width,)
    shapes["head.weight"] = (config["classes"], width)
    shapes["head.bias"] = (config["classes"],)
    return shapes


def mismatches(state, expected):
    """Lists what keeps `state` from filling a model whose tensors are `expected`
    ({key: PyTorch shape}): missing, unexpected, misshapen."""
    problems = []
    for key, shape in expected.items():
        if key not in state:
            problems.append(f"missing: {key} {shape}")
        elif tuple(state[key].shape) != shape:
            problems.append(f"misshapen: {key} is {tuple(state[key].shape)}, expected {shape}")
    for key in state:
        if key not in expected and not IGNORED.search(key):
            problems.append(f"unexpected: {key} {tuple(state[key].shape)}")
    return problems


def value_problem(state, expected):
    """Why the values of `state`'s expected tensors cannot be weights, or None.

    Integers would be cast silently and NaN or infinity gives NaN logits for every image:
    both mean a damaged or foreign file, better refused than converted.
    """
    for key in expected:
        value = state[key]
        if not np.issubdtype(value.dtype, np.floating):
            return f"{key} {tuple(value.shape)} holds {value.dtype} values, expected floating point"
    for key in expected:
        bad = int(np.count_nonzero(~np.isfinite(state[key])))
        if bad:
            return f"{key} {tuple(state[key].shape)} holds {bad} NaN or infinite value(s)"
    return None


def assign(state, mapping):
    """Copies every tensor into its Keras variable (after `mismatches` found nothing)."""
    for key, (variable, permutation) in mapping.items():
        value = state[key]
        if permutation is not None:
            value = np.transpose(value, permutation)
        variable.assign(value.astype(variable.dtype))

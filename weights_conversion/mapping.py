"""Which original checkpoint tensor goes into which Keras variable, and how it is laid out."""

import re

import numpy as np

from keras_cvt.cvt import MODEL_CONFIGS, PATCH_PADDINGS, PATCH_STRIDES

# Keras array = np.transpose(PyTorch array, permutation).
LINEAR = (1, 0)  # (out, in) -> (in, out)
CONV = (2, 3, 1, 0)  # (out, in, kh, kw) -> (kh, kw, in, out)
DEPTHWISE = (2, 3, 0, 1)  # (C, 1, kh, kw) -> (kh, kw, C, 1)
# Bookkeeping of PyTorch's BatchNorm, with no Keras counterpart.
IGNORED = re.compile(r"\.num_batches_tracked$")


def _dense(prefix, layer):
    return {f"{prefix}.weight": (layer.kernel, LINEAR), f"{prefix}.bias": (layer.bias, None)}


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
            for part in "qkv":
                conv = getattr(attn, f"conv_proj_{part}")
                bn = getattr(attn, f"conv_proj_{part}_bn")
                mapping[f"{b}.attn.conv_proj_{part}.conv.weight"] = (conv.kernel, DEPTHWISE)
                mapping[f"{b}.attn.conv_proj_{part}.bn.weight"] = (bn.gamma, None)
                mapping[f"{b}.attn.conv_proj_{part}.bn.bias"] = (bn.beta, None)
                mapping[f"{b}.attn.conv_proj_{part}.bn.running_mean"] = (bn.moving_mean, None)
                mapping[f"{b}.attn.conv_proj_{part}.bn.running_var"] = (bn.moving_variance, None)
                mapping.update(_dense(f"{b}.attn.proj_{part}", getattr(attn, f"proj_{part}")))
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


def infer_config(state):
    """Reads the architecture (and the published variant's name, if any) off the tensors.

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
    embed_dims = tuple(int(state[f"stage{i}.patch_embed.proj.weight"].shape[0]) for i in stages)
    patch_sizes = tuple(int(state[f"stage{i}.patch_embed.proj.weight"].shape[-1]) for i in stages)
    depths = tuple(
        1 + max((int(m.group(1)) for k in state if (m := re.match(rf"stage{i}\.blocks\.(\d+)\.", k))), default=-1)
        for i in stages
    )
    if "head.weight" not in state:
        raise ValueError("not a CvT classifier checkpoint: head.weight is missing")
    classes = int(state["head.weight"].shape[0])
    fc1 = state.get("stage0.blocks.0.mlp.fc1.weight")
    mlp_ratio = fc1.shape[0] / fc1.shape[1] if fc1 is not None else 4.0
    variant = next(
        (
            name
            for name, c in MODEL_CONFIGS.items()
            if c["depths"] == depths and c["embed_dims"] == embed_dims and mlp_ratio == 4.0
        ),
        None,
    )
    num_heads = MODEL_CONFIGS[variant]["num_heads"] if variant else (1,) * len(stages)
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
    }
    return variant, config


def mismatches(state, mapping):
    """Lists what keeps `state` from filling the model: missing, unexpected, misshapen."""
    problems = []
    for key, (variable, permutation) in mapping.items():
        if key not in state:
            problems.append(f"missing: {key} {torch_shape(variable, permutation)}")
        elif tuple(state[key].shape) != torch_shape(variable, permutation):
            problems.append(
                f"misshapen: {key} is {tuple(state[key].shape)}, expected {torch_shape(variable, permutation)}"
            )
    for key in state:
        if key not in mapping and not IGNORED.search(key):
            problems.append(f"unexpected: {key} {tuple(state[key].shape)}")
    return problems


def assign(state, mapping):
    """Copies every tensor into its Keras variable (after `mismatches` found nothing)."""
    for key, (variable, permutation) in mapping.items():
        value = state[key]
        if permutation is not None:
            value = np.transpose(value, permutation)
        variable.assign(value.astype(variable.dtype))

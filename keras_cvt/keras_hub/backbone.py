"""`CvTBackbone`: CvT as a keras-hub `FeaturePyramidBackbone`, and the loading of the original
checkpoints and of `hf://` repos into it."""

import dataclasses
import os

import keras
from keras_hub.models import FeaturePyramidBackbone
from keras_hub.src.utils.preset_utils import register_presets

from keras_cvt import declared, hf, pretrained, sources, weights_file
from keras_cvt.architectures import ATTENTION_OPTIONS, PATCH_PADDINGS, PATCH_SIZES, PATCH_STRIDES
from keras_cvt.builder import CvT
from keras_cvt.errors import describe_error
from keras_cvt.keras_hub import preset_files, presets

# What names the architecture in a refusal of `CvTBackbone`'s arguments.
CONFIG_SOURCE = "CvTBackbone's config (a preset's config.json, or the backbone in its task.json)"


@keras.saving.register_keras_serializable(package="keras_cvt")
class CvTBackbone(FeaturePyramidBackbone):
    """The CvT backbone: images normalised with the checkpoint's mean and std in (the image
    converter of `CvTImageClassifierPreprocessor` does it), the class token after the final
    LayerNorm out (what the classifier reads), and `pyramid_outputs` `P2`, `P3`, `P4`: the
    three stages' maps at strides 4, 8 and 16 (NHWC).

    Args:
        depths, embed_dims, num_heads, mlp_ratio, patch_sizes, patch_strides, patch_paddings,
        attention_kernel_size, q_stride, kv_stride, attention_padding, qkv_bias,
        drop_path_rate: the architecture, as in `keras_cvt.CvT` (three stages).
        image_shape: `(height, width, 3)`; height and width may be None (CvT has no position
            embedding).
        dtype: the backbone's dtype policy (its layers follow `keras.config.dtype_policy()`).
    """

    def __init__(
        self,
        depths,
        embed_dims,
        num_heads,
        mlp_ratio=4.0,
        patch_sizes=PATCH_SIZES,
        patch_strides=PATCH_STRIDES,
        patch_paddings=PATCH_PADDINGS,
        attention_kernel_size=ATTENTION_OPTIONS["attention_kernel_size"],
        q_stride=ATTENTION_OPTIONS["q_stride"],
        kv_stride=ATTENTION_OPTIONS["kv_stride"],
        attention_padding=ATTENTION_OPTIONS["attention_padding"],
        qkv_bias=ATTENTION_OPTIONS["qkv_bias"],
        drop_path_rate=0.0,
        image_shape=(None, None, 3),
        dtype=None,
        **kwargs,
    ):
        architecture = {
            "depths": depths,
            "embed_dims": embed_dims,
            "num_heads": num_heads,
            "mlp_ratio": mlp_ratio,
            "patch_sizes": patch_sizes,
            "patch_strides": patch_strides,
            "patch_paddings": patch_paddings,
            "attention_kernel_size": attention_kernel_size,
            "q_stride": q_stride,
            "kv_stride": kv_stride,
            "attention_padding": attention_padding,
            "qkv_bias": qkv_bias,
            "drop_path_rate": drop_path_rate,
        }
        # Before anything is built: keras-hub's loaders pass what a preset's files declare.
        declared.check_architecture(architecture, CONFIG_SOURCE)
        if len(depths) != 3:
            raise ValueError(f"`depths` must have 3 stages for the pyramid P2, P3, P4, got depths={depths!r}")
        architecture = {name: tuple(value) if isinstance(value, list) else value for name, value in architecture.items()}
        # keras_cvt's own model, read for its layers: its output is the class token; the maps
        # are its stages' outputs (the last stage's that of its last block, where a token model ends).
        model = CvT(
            **architecture,
            include_top=False,
            pooling="token",
            include_preprocessing=False,
            input_shape=tuple(image_shape),
            name="cvt_features",
        )
        pyramid = {
            "P2": model.get_layer("stage0_output").output,
            "P3": model.get_layer("stage1_output").output,
            "P4": model.get_layer(f"stage2_block{depths[2] - 1}").output[0],
        }
        super().__init__(inputs=model.input, outputs=model.output, dtype=dtype, **kwargs)
        quantize_as_saved(self, dtype)
        self.pyramid_outputs = pyramid
        self.architecture = architecture
        self.image_shape = tuple(image_shape)

    def get_config(self):
        config = super().get_config()
        config.update({**self.architecture, "image_shape": self.image_shape})
        return config

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """Also takes the presets of the original checkpoints (`CvTBackbone.presets`) and any
        `hf://owner/repo[@revision]` transformers CvT repo, converted on the way in. A preset
        directory is verified against the record `save_to_preset` wrote, if any, first."""
        if not is_checkpoint(preset):
            preset_files.check_directory(preset)
            return super().from_preset(preset, load_weights=load_weights, **kwargs)
        return load_checkpoint(preset, load_weights, **kwargs).backbone

    def save_to_preset(self, preset_dir, max_shard_size=10):
        """keras-hub's preset, and the record of its files' sizes and SHA-256 that loading checks."""
        super().save_to_preset(preset_dir, max_shard_size=max_shard_size)
        preset_files.write_record(preset_dir)

    def load_weights(self, filepath, *args, **kwargs):
        """Keras' `load_weights`; a preset's file is first verified against the preset's
        record, and an unreadable file is named."""
        preset_files.verify_weights(filepath)
        load_preset_weights(super().load_weights, filepath, *args, **kwargs)


register_presets(presets.PRESETS, CvTBackbone)


def quantize_as_saved(backbone, dtype):
    """Quantizes again the layers that a quantized backbone's config names.

    keras-hub saves what `quantize` did as a `DTypePolicyMap` keyed by layer path, for models
    whose every layer takes `dtype` and looks itself up there; our layers are keras_cvt's model's,
    made before the backbone, so the layers it names are quantized here (the same path,
    the same mode), and the saved int8 weights then load into them.
    """
    policies = keras.dtype_policies.get(dtype) if dtype is not None else None
    if not isinstance(policies, keras.dtype_policies.DTypePolicyMap):
        return
    saved = dict(policies.items())
    for layer in backbone._flatten_layers(include_self=False):
        policy = saved.get(layer.path)
        if policy is not None and policy.quantization_mode is not None:
            layer.quantize(policy.quantization_mode, type_check=False)


def load_preset_weights(load, filepath, *args, **kwargs):
    """`load(filepath, ...)`, with an empty, truncated or foreign file refused by its path
    (h5py's own error names none)."""
    try:
        load(filepath, *args, **kwargs)
    except (OSError, ValueError, KeyError) as error:
        size = os.path.getsize(filepath) if os.path.isfile(filepath) else None
        raise ValueError(
            f"weights file {os.fspath(filepath)!r} ({'missing' if size is None else f'{size:,} bytes'}) "
            f"cannot be loaded: {describe_error(error)}"
        ) from error


@dataclasses.dataclass
class Checkpoint:
    """A checkpoint loaded for keras-hub: the backbone, the classifier's weights (None without
    one), its labels and its evaluation transform."""

    backbone: CvTBackbone
    head: list | None
    labels: list | None
    transform: pretrained.EvaluationTransform


def is_checkpoint(preset):
    """Whether `preset` names an original checkpoint's preset or a `hf://` repo (read as a
    transformers CvT; anything else there is refused by `keras_cvt.hf_config`)."""
    return isinstance(preset, str) and (preset in presets.CHECKPOINTS or hf.is_hub_source(preset))


def load_checkpoint(preset, load_weights=True, **kwargs):
    """The `Checkpoint` of a preset name or `hf://` repo, resolved by
    `keras_cvt.sources.resolve_weights`; the weights are converted by `keras_cvt.cache`
    (downloads in huggingface_hub's cache, conversions in keras_cvt's)."""
    entry = presets.CHECKPOINTS.get(preset)
    weights = sources.resolve_weights(*((entry.name, entry.variant) if entry is not None else (preset,)))
    labels = weights.labels if isinstance(weights.labels, list) else None
    if not load_weights:
        return Checkpoint(CvTBackbone(**weights.config, **kwargs), None, labels, weights.transform)
    # Converted first: the converter holds the tensors against the architecture before
    # anything is built. The backbone's layers are those of keras_cvt's model without its
    # classifier, so the converted file loads into it as it is; the classifier's weights are
    # read beside.
    path = weights.file()
    backbone = CvTBackbone(**weights.config, **kwargs)
    weights_file.load(backbone, path)
    head = weights_file.head_weights(path) if weights.classes is not None else None
    return Checkpoint(backbone, head, labels, weights.transform)

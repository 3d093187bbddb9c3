"""Parity with HuggingFace transformers' `CvtForImageClassification`, through the converter.

HF's CvT is the original model with exact GELU in the MLP; with QuickGELU swapped in it is
the original layer for layer (docs/cvt-reference.md), so its logits and per-stage maps are
what a converted HF checkpoint must reproduce. The HF models are random, with every bias,
norm parameter and BatchNorm statistic randomised (PyTorch's 0/1 defaults would hide a
swapped or dropped tensor) and weights drawn at unit gain so the outputs depend clearly on
the input.
"""

import copy
import dataclasses

import keras
import numpy as np
import pytest
import torch
from torch import nn
from transformers import CvtConfig, CvtForImageClassification

from keras_cvt import CvT, CvT13, CvT21, hf_config
from tests.conftest import assert_same_weights_files
from keras_cvt.conversion import convert

TOLERANCE = 1e-4
SQUARE_224 = (224, 224)
SQUARE_384 = (384, 384)
NON_SQUARE = (160, 256)
ALL_SIZES = (SQUARE_224, SQUARE_384, NON_SQUARE)


@dataclasses.dataclass(frozen=True)
class Case:
    hf_config: dict
    keras_builder: object  # (weights path, include_top) -> keras.Model
    variant: str | None
    depths: tuple
    embed_dims: tuple
    mlp_ratio: float
    classes: int
    sizes: tuple


def _builder(variant_builder=None, **config):
    def build(weights, include_top):
        common = dict(
            include_top=include_top,
            weights=weights,
            include_preprocessing=False,
            input_shape=(None, None, 3),
        )
        if include_top:
            common["classifier_activation"] = None
        if variant_builder is not None:
            return variant_builder(**common)
        return CvT(**config, **common)

    return build


CASES = {
    "cvt13": Case(
        hf_config=dict(embed_dim=[64, 192, 384], depth=[1, 2, 10], num_heads=[1, 3, 6], num_labels=1000),
        keras_builder=_builder(CvT13),
        variant="cvt13",
        depths=(1, 2, 10),
        embed_dims=(64, 192, 384),
        mlp_ratio=4.0,
        classes=1000,
        sizes=ALL_SIZES,
    ),
    "cvt21": Case(
        hf_config=dict(embed_dim=[64, 192, 384], depth=[1, 4, 16], num_heads=[1, 3, 6], num_labels=1000),
        keras_builder=_builder(CvT21),
        variant="cvt21",
        depths=(1, 4, 16),
        embed_dims=(64, 192, 384),
        mlp_ratio=4.0,
        classes=1000,
        sizes=(NON_SQUARE,),
    ),
    # HF indexes its per-block drop-path list by stage number, so depth[s] must exceed s.
    "small": Case(
        hf_config=dict(embed_dim=[16, 32, 48], depth=[1, 2, 3], num_heads=[1, 2, 3], num_labels=10),
        keras_builder=_builder(depths=(1, 2, 3), embed_dims=(16, 32, 48), num_heads=(1, 2, 3), classes=10),
        variant=None,
        depths=(1, 2, 3),
        embed_dims=(16, 32, 48),
        mlp_ratio=4.0,
        classes=10,
        sizes=ALL_SIZES,
    ),
    # Other attention options, built from the config.json by `hf://`'s reader (`hf_config`).
    "attention_options": Case(
        hf_config=dict(
            embed_dim=[16, 32, 48],
            depth=[1, 2, 3],
            num_heads=[1, 2, 3],
            kernel_qkv=[5] * 3,
            padding_q=[2] * 3,
            padding_kv=[2] * 3,
            stride_kv=[3] * 3,
            qkv_bias=[False] * 3,
            num_labels=5,
        ),
        keras_builder=None,  # the case's hf_config read by `_from_hf_config`
        variant=None,
        depths=(1, 2, 3),
        embed_dims=(16, 32, 48),
        mlp_ratio=4.0,
        classes=5,
        sizes=(NON_SQUARE,),
    ),
    # Two stages, MLP ratio 2, several heads per stage: nothing of the published layout.
    "two_stage": Case(
        hf_config=dict(
            patch_sizes=[7, 3],
            patch_stride=[4, 2],
            patch_padding=[2, 1],
            embed_dim=[24, 48],
            num_heads=[2, 4],
            depth=[1, 3],
            mlp_ratio=[2.0, 2.0],
            attention_drop_rate=[0.0, 0.0],
            drop_rate=[0.0, 0.0],
            drop_path_rate=[0.0, 0.0],
            qkv_bias=[True, True],
            cls_token=[False, True],
            qkv_projection_method=["dw_bn", "dw_bn"],
            kernel_qkv=[3, 3],
            padding_kv=[1, 1],
            stride_kv=[2, 2],
            padding_q=[1, 1],
            stride_q=[1, 1],
            num_labels=7,
        ),
        keras_builder=_builder(
            depths=(1, 3),
            embed_dims=(24, 48),
            num_heads=(2, 4),
            mlp_ratio=2.0,
            patch_sizes=(7, 3),
            patch_strides=(4, 2),
            patch_paddings=(2, 1),
            classes=7,
        ),
        variant=None,
        depths=(1, 3),
        embed_dims=(24, 48),
        mlp_ratio=2.0,
        classes=7,
        sizes=(SQUARE_224, NON_SQUARE),
    ),
}



def _from_hf_config(fields):
    """A keras builder for the model that `keras_cvt.hf_config` reads off the config.json of
    transformers' `CvtConfig(**fields)`, as `hf://` builds it."""
    model = hf_config.read(CvtConfig(**fields, architectures=["CvtForImageClassification"]).to_dict())
    return _builder(**model.config, classes=model.classes)


CASES["attention_options"] = dataclasses.replace(
    CASES["attention_options"], keras_builder=_from_hf_config(CASES["attention_options"].hf_config)
)


class QuickGELU(nn.Module):
    """The original CvT's MLP activation, which HF replaced with exact GELU."""

    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


def _random_hf_model(hf_config, seed):
    torch.manual_seed(seed)
    model = CvtForImageClassification(CvtConfig(**hf_config)).eval()
    generator = torch.Generator().manual_seed(seed)

    def normal(tensor, std):
        tensor.copy_(torch.randn(tensor.shape, generator=generator) * std)

    def around_one(tensor):
        tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))

    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith(".intermediate"):
                module.activation = QuickGELU()
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                # Unit gain for Linear (HF's std 0.02 makes the logits barely depend on the
                # image); double for the convolutions, whose output BatchNorm/LayerNorm and
                # random biases would otherwise dominate.
                gain = 1.0 if isinstance(module, nn.Linear) else 2.0
                normal(module.weight, gain / module.weight[0].numel() ** 0.5)
                if module.bias is not None:
                    normal(module.bias, 0.2)
            if isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
                around_one(module.weight)
                normal(module.bias, 0.2)
            if isinstance(module, nn.BatchNorm2d):
                normal(module.running_mean, 0.2)
                around_one(module.running_var)
        normal(model.cvt.encoder.stages[-1].cls_token, 1.0)
    return model


def _stage_outputs(model, n_stages):
    return keras.Model(model.input, [model.get_layer(f"stage{i}_output").output for i in range(n_stages)])


class Converted:
    """One random HF model, saved in both formats and converted once; outputs cached by size."""

    def __init__(self, case, directory, seed):
        self.case = case
        self.hf = _random_hf_model(case.hf_config, seed)
        self.hf.save_pretrained(directory)  # model.safetensors
        # transformers 5 writes safetensors only (safe_serialization=False is ignored);
        # pytorch_model.bin as the hub holds it is `torch.save` of the state dict.
        torch.save(self.hf.state_dict(), directory / "pytorch_model.bin")
        self.safetensors = directory / "from_safetensors.weights.h5"
        self.bin = directory / "from_bin.weights.h5"
        self.info_safetensors = convert(directory / "model.safetensors", self.safetensors)
        self.info_bin = convert(directory / "pytorch_model.bin", self.bin)
        self.classifier = case.keras_builder(self.bin, include_top=True)
        # The maps come from a model without the classifier: in the classifier model the last
        # stage's map feeds nothing, so Keras prunes its `stage{i}_output` layer.
        self.backbone = _stage_outputs(case.keras_builder(self.bin, include_top=False), len(case.depths))
        self._outputs = {}

    def outputs(self, size):
        """(HF logits, HF stage maps NHWC, Keras logits, Keras stage maps) for a 2-image batch."""
        if size not in self._outputs:
            x = np.random.RandomState(size[0] * 1000 + size[1]).randn(2, 3, *size).astype("float32")
            with torch.no_grad():
                hf = self.hf(torch.from_numpy(x), output_hidden_states=True)
            x_nhwc = x.transpose(0, 2, 3, 1)
            self._outputs[size] = (
                hf.logits.numpy(),
                [h.numpy().transpose(0, 2, 3, 1) for h in hf.hidden_states],
                keras.ops.convert_to_numpy(self.classifier(x_nhwc, training=False)),
                [keras.ops.convert_to_numpy(m) for m in self.backbone(x_nhwc, training=False)],
            )
        return self._outputs[size]


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    """`get(name)`: the case's `Converted`, built on first use and kept for the module."""
    built = {}

    def get(name):
        if name not in built:
            directory = tmp_path_factory.mktemp(f"hf_{name}")
            built[name] = Converted(CASES[name], directory, seed=sorted(CASES).index(name))
        return built[name]

    return get


# Building and converting the full-size models (CvT-13, CvT-21) takes half a minute each.
SLOW_CASES = ("cvt13", "cvt21")


def _marks(name):
    return [pytest.mark.slow] if name in SLOW_CASES else []


CASE_NAMES = [pytest.param(name, marks=_marks(name), id=name) for name in sorted(CASES)]
CASE_SIZES = [
    pytest.param(name, size, marks=_marks(name), id=f"{name}-{size[0]}x{size[1]}")
    for name in sorted(CASES)
    for size in CASES[name].sizes
]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bin_and_safetensors_convert_to_identical_weights(hf_models, name):
    converted = hf_models(name)
    assert_same_weights_files(converted.bin, converted.safetensors)
    n_tensors = sum(1 for k in converted.hf.state_dict() if not k.endswith("num_batches_tracked"))
    assert converted.info_bin["tensors"] == converted.info_safetensors["tensors"] == n_tensors


@pytest.mark.parametrize("name", CASE_NAMES)
def test_no_parameter_is_left_at_its_default(hf_models, name):
    state = hf_models(name).hf.state_dict()
    zero_by_default = [k for k in state if k.endswith((".bias", ".running_mean"))]
    one_by_default = [
        k for k in state if k.endswith(".running_var") or (k.endswith(".weight") and state[k].ndim == 1)
    ]
    assert len(zero_by_default) > 0 and len(one_by_default) > 0
    assert [k for k in zero_by_default if (state[k] == 0).any()] == []
    assert [k for k in one_by_default if (state[k] == 1).any()] == []


@pytest.mark.parametrize("name", CASE_NAMES)
def test_inferred_architecture(hf_models, name):
    converted = hf_models(name)
    case = converted.case
    for info in (converted.info_bin, converted.info_safetensors):
        assert info["variant"] == case.variant
        assert info["config"]["depths"] == case.depths
        assert info["config"]["embed_dims"] == case.embed_dims
        assert info["config"]["classes"] == case.classes
        if case.variant is None:
            assert info["config"]["mlp_ratio"] == case.mlp_ratio


@pytest.mark.parametrize("name, size", CASE_SIZES)
def test_logits_match_hf(hf_models, name, size):
    hf_logits, _, keras_logits, _ = hf_models(name).outputs(size)
    assert keras_logits.shape == hf_logits.shape == (2, CASES[name].classes)
    # The comparison means something only if the logits depend clearly on the image.
    assert np.abs(hf_logits[0] - hf_logits[1]).max() > 0.1
    assert np.abs(keras_logits - hf_logits).max() <= TOLERANCE


@pytest.mark.parametrize("name, size", CASE_SIZES)
def test_stage_outputs_match_hf_hidden_states(hf_models, name, size):
    _, hf_maps, _, keras_maps = hf_models(name).outputs(size)
    embed_dims = CASES[name].embed_dims
    assert len(hf_maps) == len(keras_maps) == len(embed_dims)
    for i, (hf_map, keras_map) in enumerate(zip(hf_maps, keras_maps)):
        assert keras_map.shape == hf_map.shape, f"stage {i}"
        assert hf_map.shape[-1] == embed_dims[i]
        assert np.abs(keras_map - hf_map).max() <= TOLERANCE, f"stage {i}"


def test_exact_gelu_is_outside_the_tolerance(hf_models):
    """HF's own activation visibly differs: the tolerance separates QuickGELU from GELU."""
    converted = hf_models("small")
    hf_gelu = copy.deepcopy(converted.hf)
    for name, module in hf_gelu.named_modules():
        if name.endswith(".intermediate"):
            module.activation = nn.GELU()
    x = np.random.RandomState(7).randn(2, 3, *SQUARE_224).astype("float32")
    with torch.no_grad():
        gelu_logits = hf_gelu(torch.from_numpy(x)).logits.numpy()
    keras_logits = keras.ops.convert_to_numpy(converted.classifier(x.transpose(0, 2, 3, 1), training=False))
    assert np.abs(keras_logits - gelu_logits).max() > 10 * TOLERANCE

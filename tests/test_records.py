"""The variant and checkpoint records against everything that reads them.

Adding a variant (`keras_cvt.architectures.VARIANTS`) or a checkpoint
(`keras_cvt.pretrained.PRETRAINED`) is one entry: these tests check that the builders, the
converter, the transforms, the training recipe and README.md's tables all follow it.
"""

import argparse
import ast
import dataclasses
import inspect
import math
import types

import pytest

import keras_cvt
from benchmarks import readme_tables
from keras_cvt import architectures, pretrained, variants
from keras_cvt.training import cli, recipe
from tests.conftest import ROOT
from keras_cvt.conversion import mapping

VARIANTS = list(architectures.VARIANTS.values())
# Building CvT-W24 allocates its 277 million parameters.
HEAVY = {"cvtw24"}


def _variant_params():
    return [pytest.param(v, id=v.name, marks=[pytest.mark.slow] if v.name in HEAVY else []) for v in VARIANTS]


def _stages(model):
    """(blocks, width, heads) per stage and the drop path rate of the last block, as built."""
    blocks = [layer for layer in model.layers if type(layer).__name__ == "CvTBlock"]
    stages = sorted({int(layer.name.split("_")[0][len("stage") :]) for layer in blocks})
    found = []
    for stage in stages:
        configs = [b.get_config() for b in blocks if b.name.startswith(f"stage{stage}_block")]
        assert len({(c["dim"], c["num_heads"]) for c in configs}) == 1
        found.append((len(configs), configs[0]["dim"], configs[0]["num_heads"]))
    return found, blocks[-1].get_config()["drop_path_rate"]


@pytest.mark.parametrize("variant", _variant_params())
def test_every_variant_has_its_builder_and_it_builds_the_record(variant):
    builder = getattr(keras_cvt, variant.builder)
    assert variant.builder in keras_cvt.__all__
    assert variants.BUILDERS[variant.name] is builder
    model = builder(weights=None, input_shape=(32, 32, 3))
    (stages, drop_path_rate) = _stages(model)
    assert stages == list(zip(variant.depths, variant.embed_dims, variant.num_heads))
    assert drop_path_rate == pytest.approx(variant.drop_path_rate)
    assert model.name == variant.name
    # The converter's arithmetic of the original's tensors (what README's table prints) is the
    # model's own count.
    assert model.count_params() == readme_tables.parameter_count(variant)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_every_builder_is_a_def_that_grep_finds_with_the_record_s_defaults(variant):
    source = (ROOT / "keras_cvt" / "variants.py").read_text()
    assert f"\ndef {variant.builder}(\n" in source
    parameters = inspect.signature(getattr(keras_cvt, variant.builder)).parameters
    assert list(parameters) == [
        "include_top", "weights", "input_tensor", "input_shape", "pooling", "classes",
        "classifier_activation", "include_preprocessing", "drop_path_rate", "name",
    ]
    assert (parameters["drop_path_rate"].default, parameters["name"].default) == (variant.drop_path_rate, variant.name)
    assert f"Instantiates the {variant.builder} architecture." in getattr(keras_cvt, variant.builder).__doc__


def test_a_builder_that_contradicts_its_record_is_refused():
    def CvT13(include_top=True, drop_path_rate=0.5, name="cvt13"):  # noqa: N802
        return None

    with pytest.raises(ValueError, match="CvT13 does not match the record of 'cvt13'"):
        variants._builder("cvt13")(CvT13)
    assert variants.BUILDERS["cvt13"] is keras_cvt.CvT13


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_parameter_counts_are_the_published_ones(variant):
    count = readme_tables.parameter_count(variant)
    trainable = count - sum(
        math.prod(shape)
        for key, shape in mapping.expected_shapes({**variant.config, "classes": 1000}).items()
        if key.endswith((".running_mean", ".running_var"))
    )
    # The zoos' 0.1M figures are the count with BatchNorm statistics, truncated: rounding gives
    # 31.7M for CvT-21 and the trainable count 277.2M for CvT-W24, neither what was published.
    assert math.floor(count / 1e5) / 10 == variant.published_params
    # The paper's Table 3 rounds to 1M, which either count gives.
    assert round(count / 1e6) == round(trainable / 1e6) == round(variant.published_params)


def test_variant_names_and_builders_are_unique_and_recognised():
    assert len({v.builder for v in VARIANTS}) == len(VARIANTS)
    assert all(architectures.get(v.name) is v for v in VARIANTS)
    with pytest.raises(ValueError, match=r"unknown CvT variant 'cvt99': expected one of \['cvt13'"):
        architectures.get("cvt99")
    assert architectures.MODEL_CONFIGS == {v.name: {**v.config, "drop_path_rate": v.drop_path_rate} for v in VARIANTS}


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_the_converter_recognises_each_variant_from_its_shapes(variant):
    shapes = mapping.expected_shapes({**variant.config, "classes": 1000})
    state = {key: types.SimpleNamespace(shape=shape) for key, shape in shapes.items()}
    name, config = mapping.infer_config(state)
    assert name == variant.name
    assert {k: config[k] for k in ("depths", "embed_dims", "num_heads")} == variant.config
    assert config["classes"] == 1000
    # One block fewer is no published variant: heads cannot be read off the tensors then.
    last = len(variant.depths) - 1
    fewer = {k: v for k, v in state.items() if not k.startswith(f"stage{last}.blocks.{variant.depths[-1] - 1}.")}
    assert mapping.infer_config(fewer)[0] is None


def test_the_recipe_reads_each_variants_weight_decay_from_its_record(monkeypatch):
    for v in VARIANTS:
        assert recipe.weight_decay_for(v.name) == recipe.VARIANT_WEIGHT_DECAY[v.name] == v.weight_decay
    assert recipe.weight_decay_for({"depths": (1,), "embed_dims": (16,), "num_heads": (1,)}) == recipe.WEIGHT_DECAY
    with pytest.raises(ValueError, match="unknown CvT variant 'cvt99'"):
        recipe.weight_decay_for("cvt99")
    # A new record is all it takes: nothing holds a copy.
    extra = dataclasses.replace(VARIANTS[0], name="cvt99", weight_decay=0.2)
    monkeypatch.setitem(architectures.VARIANTS, "cvt99", extra)
    assert recipe.weight_decay_for("cvt99") == 0.2


def test_the_command_lines_offer_every_variant():
    parser = argparse.ArgumentParser()
    cli.add_architecture_arguments(parser)
    (model,) = [a for a in parser._actions if a.dest == "model"]
    assert model.choices == sorted(architectures.VARIANTS)


ORIGINAL_SHORT_SIDE = {224: 256, 384: None}  # lib/dataset/transformas/build.py: Resize(256) at 224


def test_every_checkpoint_has_its_variant_and_the_original_evaluation():
    keys = [(p.variant, p.name) for p in pretrained.PRETRAINED]
    assert len(set(keys)) == len(keys)
    assert len({p.repo for p in pretrained.PRETRAINED}) == len(keys)
    for p in pretrained.PRETRAINED:
        assert p.variant in architectures.VARIANTS
        t = p.transform
        assert t.size == p.resolution
        short_side = ORIGINAL_SHORT_SIDE[p.resolution]
        assert (None if t.crop_ratio is None else int(t.size / t.crop_ratio)) == short_side
        assert (t.interpolation, t.mean, t.std) == ("bicubic", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        assert pretrained.transform_for(p.variant, p.name) == t
        assert pretrained.lookup(p.variant, p.name) is p
    for (variant, alias), target in pretrained.ALIASES.items():
        assert (variant, alias) not in keys and (variant, target) in keys
        assert pretrained.lookup(variant, alias) is pretrained.lookup(variant, target)
    assert pretrained.transform_for("cvt13", None) == pretrained.transform_for("cvt13", "a.weights.h5")
    assert pretrained.transform_for("cvt13", None) == pretrained.DEFAULT_TRANSFORM
    assert pretrained.transform_for("cvt21", "imagenet-384", size=256).size == 256


def test_available_weights_carries_each_checkpoints_transform():
    listed = keras_cvt.available_weights()
    assert [(w["variant"], w["weights"]) for w in listed] == [(p.variant, p.name) for p in pretrained.PRETRAINED]
    for w, p in zip(listed, pretrained.PRETRAINED):
        assert w["transform"] == {
            "size": p.resolution,
            "crop_ratio": p.transform.crop_ratio,
            "interpolation": "bicubic",
            "mean": pretrained.IMAGENET_MEAN,
            "std": pretrained.IMAGENET_STD,
        }
    with pytest.raises(ValueError, match="unknown CvT variant 'cvt99'"):
        keras_cvt.available_weights("cvt99")


# README.md's tables, compared line by line with what the records make.


def _table(lines, header):
    """The table of `lines` that starts with `header`: its lines up to the first that is no row."""
    if header not in lines:
        return None
    start = lines.index(header)
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


def _readme_differences(text):
    """What README text `text` gets wrong about the records, one line per wrong or missing row."""
    lines = [line.rstrip() for line in text.splitlines()]
    problems = []
    for expected in (readme_tables.variants_table(), readme_tables.weights_table()):
        found = _table(lines, expected[0])
        if found is None:
            problems.append(f"no table headed {expected[0]}")
            continue
        problems += [f"missing or edited: {row}" for row in expected if row not in found]
        problems += [f"not in the records: {row}" for row in found if row not in expected]
    return problems


README = ROOT / "README.md"


def test_readme_tables_are_the_records():
    assert _readme_differences(README.read_text()) == [], "run python benchmarks/readme_tables.py"


def test_an_edited_or_missing_readme_row_is_found():
    text = README.read_text()
    variant_row = readme_tables.variants_table()[2]
    weights_row = readme_tables.weights_table()[-1]
    assert _readme_differences(text.replace(variant_row + "\n", "")) == [f"missing or edited: {variant_row}"]
    edited = weights_row.replace("87.6", "87.7")
    assert _readme_differences(text.replace(weights_row, edited)) == [
        f"missing or edited: {weights_row}",
        f"not in the records: {edited}",
    ]
    header = readme_tables.WEIGHTS_HEADER
    assert _readme_differences(text.replace(header, header.replace("top-1", "top1"))) == [f"no table headed {header}"]


# No module besides the records holds a copy of their facts.

RECORDS = {ROOT / "keras_cvt" / "architectures.py", ROOT / "keras_cvt" / "pretrained.py"}


def _copies(source):
    """`(line, value)` of each crop ratio or list of variant names written out in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and type(node.value) is float and node.value == pretrained.CENTER_CROP:
            found.append((node.lineno, node.value))
        if isinstance(node, (ast.Dict, ast.List, ast.Set, ast.Tuple)):
            items = node.keys if isinstance(node, ast.Dict) else node.elts
            named = [i.value for i in items if isinstance(i, ast.Constant) and i.value in architectures.VARIANTS]
            if len(named) > 1:
                found.append((node.lineno, named))
    return found


def _sources(*folders):
    return [p for folder in folders for p in sorted((ROOT / folder).rglob("*.py")) if p not in RECORDS]


@pytest.mark.parametrize("path", _sources("examples", "keras_cvt/training"), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_copy_of_a_record_in_the_examples_and_training(path):
    assert _copies(path.read_text()) == []


def test_the_copy_finder_finds_copies():
    source = 'CROP = 0.875\nNAMES = ("cvt13", "cvt21")\nONE = {"cvt13": 1}\nBUILDERS = {"cvt13": 1, "cvtw24": 2}\n'
    assert _copies(source) == [(1, 0.875), (2, ["cvt13", "cvt21"]), (4, ["cvt13", "cvtw24"])]

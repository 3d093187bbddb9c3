"""README.md's tables of the variants and of the pretrained weights, made from the records.

    python benchmarks/readme_tables.py     # prints both tables, to paste into README.md

`keras_cvt.architectures` and `keras_cvt.pretrained` hold the facts; `tests/test_records.py`
fails when README.md's tables differ from what this prints, so a new variant or checkpoint is
one record here and one paste there.
"""

import math
import sys

from keras_cvt import architectures, pretrained
from keras_cvt.conversion import mapping

VARIANTS_HEADER = "| builder | depths | widths | heads | params (`count_params()`) | drop path |"
WEIGHTS_HEADER = "| builder | `weights=` | resolution | pre-training | top-1 (paper) | hub repo |"


def _row(cells):
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def _listed(values):
    return ", ".join(str(v) for v in values)


def parameter_count(variant, classes=1000):
    """`count_params()` of the variant's classifier (BatchNorm moving statistics included),
    from the converter's arithmetic of its tensors: nothing is built."""
    shapes = mapping.expected_shapes({**variant.config, "classes": classes})
    return sum(math.prod(shape) for shape in shapes.values())


def variants_table():
    """The lines of README's table of variants (under "Models")."""
    return [VARIANTS_HEADER, "|---|---|---|---|---|---|"] + [
        _row(
            (
                f"`{v.builder}`",
                _listed(v.depths),
                _listed(v.embed_dims),
                _listed(v.num_heads),
                f"{parameter_count(v):,}",
                v.drop_path_rate,
            )
        )
        for v in architectures.VARIANTS.values()
    ]


def weights_table():
    """The lines of README's table of pretrained weights (under "Pretrained weights")."""
    rows = [WEIGHTS_HEADER, "|---|---|---|---|---|---|"]
    for p in pretrained.PRETRAINED:
        aliases = [
            alias for (variant, alias), target in pretrained.ALIASES.items() if (variant, target) == (p.variant, p.name)
        ]
        name = f'`"{p.name}"`' + "".join(f' (also `"{alias}"`)' for alias in aliases)
        builder = architectures.VARIANTS[p.variant].builder
        rows.append(_row((f"`{builder}`", name, p.resolution, p.pretraining, p.top1, p.repo)))
    return rows


def main():
    print("\n".join(variants_table()))
    print()
    print("\n".join(weights_table()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The seven original ImageNet checkpoints, one record each: where they live, what pins them,
and how they were evaluated.

All are HuggingFace hub repos of Microsoft's weights. We download `tf_model.h5` (HF's
TensorFlow copy of the same weights) because h5py reads it, so pretrained weights never need
PyTorch. A `sha256` is the file's Git LFS id at the pinned revision; where none is known, the
download is checked against the LFS id the hub reports,
and always by the converter's check of every tensor's name and shape.

Each record carries its evaluation transform (as timm's pretrained configs do), which the
builders (default input size), exports, evaluation, training and the examples all read through
`transform_for`: which transform goes with which weights is decided here only. Adding a
checkpoint is one entry in `PRETRAINED`.

Pure data: importing it imports nothing but `keras_cvt.architectures`.
"""

import dataclasses
import os

from keras_cvt import architectures

# The statistics the original checkpoints were trained with (RGB, on pixels scaled to [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The original's evaluation crop at 224: the short side resized to 224 / 0.875 = 256, then the
# centre 224 x 224 (`lib/dataset/transformas/build.py`, `TEST.CENTER_CROP`).
CENTER_CROP = 0.875


@dataclasses.dataclass(frozen=True)
class EvaluationTransform:
    """How images are turned into a model's input at evaluation.

    Attributes:
        size: the output height and width.
        crop_ratio: the short side is resized to `int(size / crop_ratio)` and the centre
            `size x size` cropped; None resizes straight to `size x size`.
        interpolation: the resize filter (PIL's, antialiased when downscaling).
        mean, std: the RGB normalisation, on pixels scaled to [0, 1] (inside the models).
    """

    size: int = architectures.DEFAULT_SIZE
    crop_ratio: float | None = CENTER_CROP
    interpolation: str = "bicubic"
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD


# The transform for weights without a record (a `.weights.h5` of your own): the original's 224
# evaluation. Yours may differ: every command line takes `--size` and `--crop-ratio`.
DEFAULT_TRANSFORM = EvaluationTransform()


@dataclasses.dataclass(frozen=True)
class Pretrained:
    variant: str
    name: str
    repo: str
    revision: str
    sha256: str | None
    resolution: int
    pretraining: str
    top1: float
    filename: str = "tf_model.h5"
    classes: int = 1000
    # The label set of the classifier (`keras_cvt.decode_predictions`, serving's labels).
    labels: str = "imagenet-1k"

    @property
    def transform(self):
        """The original evaluation: the 224 models see the centre 87.5%, the 384 models all of
        the image resized to 384 x 384."""
        return EvaluationTransform(self.resolution, CENTER_CROP if self.resolution == 224 else None)


# (variant, name, repo, revision, sha256 of tf_model.h5, resolution, pre-training, top-1)
PRETRAINED = (
    Pretrained("cvt13", "imagenet", "microsoft/cvt-13", "b71e71dd9d829cda162fb97edd1ca076643a299c",
               "d782bacd92bd57ab1b7e59e5cbff7f1a102e094cc338ac72186af080ebd5abc1", 224, "ImageNet-1k", 81.6),
    Pretrained("cvt13", "imagenet-384", "microsoft/cvt-13-384", "a14331452cabd82f5ba2f8efa77011b78b093f21",
               "f051ef65a08966ebe82223a60ede99837b68ea0d295d2e89dd28fcad9be65aba", 384, "ImageNet-1k", 83.0),
    Pretrained("cvt13", "imagenet22k-384", "microsoft/cvt-13-384-22k", "main", None, 384, "ImageNet-22k", 83.3),
    Pretrained("cvt21", "imagenet", "microsoft/cvt-21", "main", None, 224, "ImageNet-1k", 82.5),
    Pretrained("cvt21", "imagenet-384", "microsoft/cvt-21-384", "dd47b76270a968cfc654b6022d39693211067dc2",
               "2a51df60fe8ccc3e60c2a727d512fe79bdea9ce6373a71bb636862aadcacf47d", 384, "ImageNet-1k", 83.3),
    Pretrained("cvt21", "imagenet22k-384", "microsoft/cvt-21-384-22k", "main", None, 384, "ImageNet-22k", 84.9),
    Pretrained("cvtw24", "imagenet22k-384", "microsoft/cvt-w24-384-22k", "ae2dcae5c8e0297fff230d8fd581d11344500618",
               "ac2fc9e283e69bc5f57a42acb0ae33f1ba0e15cbdb03e588da0be5cbefe680ff", 384, "ImageNet-22k", 87.6),
)

# "imagenet" means each variant's natural default: its 224 ImageNet-1k model, or for CvT-W24,
# which was only released at 384 after ImageNet-22k pre-training, that one.
ALIASES = {("cvtw24", "imagenet"): "imagenet22k-384"}


def available_weights(variant=None):
    """The pretrained weights names, as a list of dicts (one per checkpoint).

    Each dict holds the checkpoint's record: its `variant` and `weights` name, `resolution`,
    `pretraining`, paper `top1`, hub `repo` and `revision`, and its evaluation `transform`
    (`size`, `crop_ratio`, `interpolation`, `mean`, `std`: `EvaluationTransform`'s fields).

    Args:
        variant: a name of `keras_cvt.architectures.VARIANTS` (`"cvt13"`, ...) or None for all.
    """
    if variant is not None:
        architectures.get(variant)
    return [
        {
            "variant": p.variant,
            "weights": p.name,
            "resolution": p.resolution,
            "pretraining": p.pretraining,
            "top1": p.top1,
            "repo": p.repo,
            "revision": p.revision,
            "transform": dataclasses.asdict(p.transform),
        }
        for p in PRETRAINED
        if variant in (None, p.variant)
    ]


def lookup(variant, name):
    """The checkpoint that `weights=name` means for `variant`, or ValueError listing the names."""
    name = ALIASES.get((variant, name), name)
    for p in PRETRAINED:
        if p.variant == variant and p.name == name:
            return p
    known = sorted(names(variant))
    raise ValueError(
        f"`weights`={name!r} is not a pretrained checkpoint of {variant}: expected None, a path to a "
        f".weights.h5 file, or one of {known}"
    )


def transform_for(variant, weights, **overrides):
    """The evaluation transform that goes with `weights` of `variant`: the checkpoint's for a
    pretrained name (ValueError for a name `variant` has not), `DEFAULT_TRANSFORM` for None or
    a file; `overrides` (`size=`, `crop_ratio=`, ...: what a user asked for instead) replace
    its fields."""
    transform = lookup(variant, weights).transform if is_pretrained_name(weights) else DEFAULT_TRANSFORM
    return dataclasses.replace(transform, **overrides)


def is_pretrained_name(weights):
    """Whether `weights` names a pretrained checkpoint rather than giving a file path."""
    # A path says so with a directory or an .h5 suffix; anything else is taken for a name, so
    # that a typo of one is reported against the list of names rather than as a missing file.
    return isinstance(weights, str) and not weights.endswith(".h5") and not {"/", os.sep} & set(weights)


def names(variant):
    """The pretrained names `weights=` takes for `variant`, aliases included."""
    return {p.name for p in PRETRAINED if p.variant == variant} | {a for v, a in ALIASES if v == variant}

"""Any CvT on the HuggingFace hub by name: `hf://owner/repo[@revision]`.

A transformers `CvtForImageClassification` (or `CvtModel`) repo: its `config.json` gives the
architecture and the labels (`id2label`), its weights come from `model.safetensors`, else
`pytorch_model.bin` (read with `torch.load(weights_only=True)`), else `tf_model.h5`, converted
once into the pretrained cache. `keras_cvt.CvT13(weights="hf://microsoft/cvt-13")` takes the
published variants' repos; `keras_cvt.from_hf("hf://...")` any architecture CvT can express.
"""

import dataclasses
import json
import re

from keras_cvt import architectures, cache, hf_config, hub, weights_file
from keras_cvt.builder import CvT

PREFIX = "hf://"
# In order of preference: safetensors needs no PyTorch and cannot hold code.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "tf_model.h5")
_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_REVISION = re.compile(r"[\w./-]+")


@dataclasses.dataclass(frozen=True)
class HubFile:
    """One file of a hub repo, in the form `keras_cvt.hub` and `keras_cvt.cache` take."""

    repo: str
    revision: str
    filename: str
    variant: str = "cvt"
    sha256: str | None = None
    resolution: int = architectures.DEFAULT_SIZE

    @property
    def name(self):
        # Unique per repo and file in the cache's names; the commit is added there.
        return f"hf-{self.repo.replace('/', '--')}-{self.filename.split('.')[0]}"


def is_hub_source(weights):
    return isinstance(weights, str) and weights.startswith(PREFIX)


def parse(source):
    """(repo, revision) of `hf://owner/repo[@revision]`, or ValueError naming the form."""
    if not is_hub_source(source):
        raise ValueError(f"a hub repo is named hf://owner/name or hf://owner/name@revision, got {source!r}")
    repo, at, revision = source[len(PREFIX) :].partition("@")
    if not _REPO.fullmatch(repo) or (at and not _REVISION.fullmatch(revision)) or ".." in source:
        raise ValueError(
            f"`weights`={source!r} is not a hub repo: expected hf://owner/name or "
            "hf://owner/name@revision (a branch, tag or commit)"
        )
    return repo, revision or "main"


def read_config(source, progress=True):
    """The `keras_cvt.hf_config.HubModel` that the repo's `config.json` describes."""
    entry = HubFile(*parse(source), "config.json")
    path, _ = hub.download(entry, progress=progress)
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except ValueError as error:
        raise ValueError(f"config.json of {source} is not JSON: {error}") from error
    return hf_config.read(config, source=f"config.json of {source}")


def labels(source):
    """The class names of the repo's classifier (`id2label`, in class order), or None.

    What the serving export takes: `keras_cvt.export_for_serving(model, ..., labels=labels(source))`.
    """
    return None if (model := read_config(source)).labels is None else list(model.labels)


def fetch_weights(source, model, progress=True):
    """The converted `.weights.h5` of the repo's weights (the first of `WEIGHT_FILES` it has)."""
    repo, revision = parse(source)
    variant = model.variant or "cvt"
    first_error = None
    for filename in WEIGHT_FILES:
        try:
            return cache.fetch(HubFile(repo, revision, filename, variant=variant), progress=progress)
        except (hub.NotFoundError, hub.OfflineError) as error:
            first_error = first_error or error
    raise type(first_error)(
        f"{source} has none of {', '.join(WEIGHT_FILES)} that keras_cvt could use; the first: {first_error}"
    ) from first_error


def from_hf(
    source,
    include_top=True,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classifier_activation="softmax",
    include_preprocessing=True,
    name=None,
):
    """A CvT of any architecture with the weights of a HuggingFace hub repo.

    Args:
        source: `"hf://owner/repo"` or `"hf://owner/repo@revision"`: a transformers
            `CvtForImageClassification` (or `CvtModel`) repo. `HF_TOKEN` reads private and
            gated repos; `HF_ENDPOINT`, `HF_HUB_OFFLINE` mean what they mean to huggingface_hub.
        include_top, input_tensor, input_shape, pooling, classifier_activation,
        include_preprocessing, name: as in `keras_cvt.CvT13`; the classifier has the repo's
            classes (`keras_cvt.hf.labels(source)` names them).

    Returns:
        A `keras.Model`.

    Raises:
        ValueError: not an `hf://` source, a config CvT cannot express, weights that do not
            fit it.
        keras_cvt.hub.HubError: the repo or its files could not be fetched.
    """
    model = read_config(source)
    classes = check_top(source, model, include_top)
    path = fetch_weights(source, model)
    return CvT(
        **model.config,
        include_top=include_top,
        weights=path,
        input_tensor=input_tensor,
        input_shape=input_shape,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        include_preprocessing=include_preprocessing,
        name=name or model.variant or "cvt",
    )


def check_top(source, model, include_top):
    """The classifier width for `model`, refusing a classifier that the repo has not."""
    if include_top and model.classes is None:
        raise ValueError(f"{source} has no classifier (a CvtModel): pass include_top=False")
    return model.classes or 1000


def variant_weights(source, variant, include_top, classes):
    """The converted weights of `source` for a variant builder, which must be its architecture."""
    model = read_config(source)
    if model.variant != variant:
        raise ValueError(
            f"`weights`={source!r} is a CvT with {model.config['depths']} blocks, widths "
            f"{model.config['embed_dims']} and heads {model.config['num_heads']}, not {variant}: "
            f"build it with keras_cvt.from_hf({source!r})"
        )
    if include_top and classes != check_top(source, model, include_top):
        raise ValueError(
            f"`weights`={source!r} has a {model.classes}-class classifier, got classes={classes}; "
            "pass include_top=False and add your own head for other classes"
        )
    path = fetch_weights(source, model)
    if include_top:
        weights_file.check_classes(path, classes)
    return path

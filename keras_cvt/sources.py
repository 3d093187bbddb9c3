"""What `weights=` names, resolved in one place: `resolve_weights`.

`weights` is None (random weights), the name of a published checkpoint (`"imagenet"`, see
`keras_cvt.available_weights()`), `"hf://owner/repo[@revision]"` (a transformers CvT repo), or
the path of a `.weights.h5` file. Every entry point (the builders, `from_hf`, keras-hub's
`from_preset`, training, the export command) asks this module what it names: the record of
the checkpoint (architecture, classifier width, labels, evaluation transform), learnt without
downloading the weights, and then the converted file, fetched by `Weights.file()`.
"""

import dataclasses
import os

from keras_cvt import architectures, cache, hf, pretrained, weights_file


@dataclasses.dataclass(frozen=True)
class Weights:
    """What a `weights` argument names.

    Attributes:
        source: the argument as given.
        config: the `keras_cvt.CvT` architecture the weights are for (a variant's for a name,
            config.json's for `hf://`); None for a file (which does not record its heads) or None.
        variant: the published variant of that architecture (`"cvt13"`...), or None.
        classes: the width of the weights' classifier; None without one (or without weights).
        labels: the class names (`id2label` of a `hf://` repo) or the name of a label set
            (`"imagenet-1k"`), or None.
        transform: the evaluation transform that goes with the weights.
        entry: the `keras_cvt.pretrained.Pretrained` record of a name.
        repo: the `keras_cvt.hf.Repo` of a `hf://` source (config.json read at one commit).
        path: the `.weights.h5` of a file argument.
    """

    source: object
    config: dict | None = None
    variant: str | None = None
    classes: int | None = None
    labels: object = None
    transform: pretrained.EvaluationTransform = pretrained.DEFAULT_TRANSFORM
    entry: pretrained.Pretrained | None = None
    repo: hf.Repo | None = None
    path: str | None = None

    def file(self, progress=True):
        """The `.weights.h5` to load (None for random weights): a name's or a repo's converted
        in the pretrained cache on first use (`keras_cvt.cache`), a file's as given."""
        if self.entry is not None:
            return cache.fetch(self.entry, progress=progress)
        if self.repo is not None:
            return hf.fetch_weights(self.repo, progress=progress)
        return self.path


def resolve_weights(weights, variant=None):
    """The `Weights` that `weights` names for `variant` (a name of
    `keras_cvt.architectures.VARIANTS`, or None for an architecture of your own).

    Reads a `hf://` repo's config.json, never its weights; a file is opened once, so that a
    damaged one is refused before a model is built for it.

    Raises:
        TypeError: `weights` is neither None nor a string or path.
        ValueError: a name `variant` has no checkpoint of (or any name without a variant), a
            `hf://` repo of another architecture than `variant`'s, a path that is not a CvT
            `.weights.h5` file.
        keras_cvt.downloads.HubError: a `hf://` repo's config.json could not be fetched.
    """
    if weights is None:
        return Weights(None)
    if hf.is_hub_source(weights):
        repo = hf.read_repo(weights)
        model = repo.model
        if variant is not None and model.variant != variant:
            raise ValueError(
                f"`weights`={weights!r} is a CvT with {model.config['depths']} blocks, widths "
                f"{model.config['embed_dims']} and heads {model.config['num_heads']}, not {variant}: "
                f"build it with keras_cvt.from_hf({weights!r})"
            )
        labels = None if model.labels is None else list(model.labels)
        return Weights(weights, model.config, model.variant, model.classes, labels, repo=repo)
    if variant is not None and pretrained.is_pretrained_name(weights):
        entry = pretrained.lookup(variant, weights)
        config = architectures.get(variant).config
        return Weights(weights, config, variant, entry.classes, entry.labels, entry.transform, entry=entry)
    path = weights_file.resolve_path(weights)
    return Weights(os.fspath(weights), variant=variant, classes=weights_file.head_classes(path), path=path)

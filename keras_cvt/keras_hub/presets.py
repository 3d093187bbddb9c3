"""The keras-hub presets of the original checkpoints, made from `keras_cvt.pretrained`'s records.

Pure data: one preset per `Pretrained` record, named `<variant>_<weights>` with underscores
(`cvt13_imagenet`, `cvt13_imagenet_384`, ..., `cvtw24_imagenet22k_384`).
"""

from keras_cvt import architectures, pretrained


def preset_name(entry):
    return f"{entry.variant}_{entry.name.replace('-', '_')}"


# {preset name: the Pretrained record}
CHECKPOINTS = {preset_name(p): p for p in pretrained.PRETRAINED}

# keras-hub's form of a preset (its `presets` listings read "metadata"); `kaggle_handle` is
# where keras-hub's own loaders would look: these live on the HuggingFace hub, in its format,
# which `CvTBackbone.from_preset` and `CvTImageClassifier.from_preset` convert on the way in.
PRESETS = {
    name: {
        "metadata": {
            "description": (
                f"{architectures.get(p.variant).title}, {p.pretraining} pre-training, ImageNet-1k "
                f"classifier at {p.resolution}x{p.resolution} (top-1 {p.top1}%), from {p.repo}."
            ),
            "official_name": "CvT",
            "path": "cvt",
            "model_card": f"https://huggingface.co/{p.repo}",
        },
        "kaggle_handle": f"hf://{p.repo}",
    }
    for name, p in CHECKPOINTS.items()
}

"""`CvTImageClassifier`: the keras-hub image classifier of CvT, on the class token."""

import keras
from keras_hub.models import ImageClassifier
from keras_hub.src.models.task import Task

from keras_cvt import declared
from keras_cvt.keras_hub import preset_files
from keras_cvt.keras_hub.backbone import CvTBackbone, is_checkpoint, load_checkpoint, load_preset_weights
from keras_cvt.keras_hub.preprocessor.image_classifier_preprocessor import CvTImageClassifierPreprocessor
from keras_cvt.keras_hub.preprocessor.image_converter import CvTImageConverter


# What names the classifier in a refusal of its arguments.
CLASSIFIER_SOURCE = "CvTImageClassifier's config (the task.json of a preset)"


@keras.saving.register_keras_serializable(package="keras_cvt")
class CvTImageClassifier(ImageClassifier):
    """A `Dense` classifier on the backbone's class token (after its final LayerNorm), as the
    original CvT classifies.

    Args:
        backbone: a `CvTBackbone`.
        num_classes: the classifier's width.
        preprocessor: a `CvTImageClassifierPreprocessor` or None (then the model takes
            normalised images).
        activation: of the classifier; None gives logits.
        dropout: before the classifier (0 in the original).
        head_dtype: the classifier's dtype policy (the backbone's by default).
        labels: optional class names (`id2label` of a `hf://` repo), kept in the config.
    """

    backbone_cls = CvTBackbone
    preprocessor_cls = CvTImageClassifierPreprocessor

    def __init__(
        self,
        backbone,
        num_classes=None,
        preprocessor=None,
        activation=None,
        dropout=0.0,
        head_dtype=None,
        labels=None,
        **kwargs,
    ):
        if num_classes is None:
            # What keras-hub's generic loader passes for a preset whose task.json is another class's.
            raise ValueError(
                "CvTImageClassifier needs `num_classes`: a preset whose task.json is not a "
                "CvTImageClassifier's gives none; pass num_classes=..."
            )
        if isinstance(backbone, CvTBackbone):
            # The classifier's width, bounded with the weights it adds, before it is built.
            declared.check_architecture(backbone.architecture, CLASSIFIER_SOURCE, classes=num_classes)
        if labels is not None and (
            not isinstance(labels, (list, tuple))
            or len(labels) != num_classes
            or not all(isinstance(label, str) for label in labels)
        ):
            raise ValueError(
                f"{CLASSIFIER_SOURCE}: `labels` must be the names (strings) of the {num_classes} "
                f"classes, got {str(labels)[:200]}"
            )
        head_dtype = head_dtype or backbone.dtype_policy
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.output_dropout = keras.layers.Dropout(dropout, dtype=head_dtype, name="output_dropout")
        self.output_dense = keras.layers.Dense(
            num_classes, activation=activation, dtype=head_dtype, name="predictions"
        )
        inputs = backbone.input
        outputs = self.output_dense(self.output_dropout(backbone(inputs)))
        # ImageClassifier's own graph pools a feature map; CvT's classifier reads the class token.
        Task.__init__(self, inputs=inputs, outputs=outputs, **kwargs)
        self.num_classes, self.activation, self.dropout = num_classes, activation, dropout
        self.labels = None if labels is None else list(labels)

    def get_config(self):
        config = Task.get_config(self)
        config.update(
            {
                "num_classes": self.num_classes,
                "activation": self.activation,
                "dropout": self.dropout,
                "labels": self.labels,
            }
        )
        return config

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """Also takes the presets of the original checkpoints (`CvTImageClassifier.presets`)
        and any `hf://owner/repo[@revision]` transformers CvtForImageClassification repo; the
        preprocessor applies that checkpoint's evaluation transform."""
        if not is_checkpoint(preset):
            # keras-hub builds a classifier without `num_classes` from a task.json of another class.
            preset_files.check_directory(preset, task=True, task_class=None if "num_classes" in kwargs else cls)
            return super().from_preset(preset, load_weights=load_weights, **kwargs)
        backbone_kwargs = {key: kwargs.pop(key) for key in ("dtype", "image_shape") if key in kwargs}
        checkpoint = load_checkpoint(preset, load_weights, **backbone_kwargs)
        if checkpoint.head is None and load_weights:
            raise ValueError(f"{preset} has no classifier (a CvtModel): load it with CvTBackbone.from_preset")
        kwargs.setdefault(
            "preprocessor",
            CvTImageClassifierPreprocessor(
                image_converter=CvTImageConverter.from_transform(checkpoint.transform)
            ),
        )
        head, labels = checkpoint.head, kwargs.pop("labels", checkpoint.labels)
        num_classes = kwargs.pop("num_classes", None)
        if head is not None and num_classes not in (None, len(head[1])):
            # Another task: the checkpoint's classifier and labels do not apply.
            head, labels = None, kwargs.get("labels")
        num_classes = num_classes or (len(head[1]) if head is not None else 1000)
        model = cls(checkpoint.backbone, num_classes, labels=labels, **kwargs)
        if head is not None:
            model.output_dense.set_weights(head)
        return model

    def save_to_preset(self, preset_dir, max_shard_size=10):
        """keras-hub's preset, and the record of its files' sizes and SHA-256 that loading checks."""
        super().save_to_preset(preset_dir, max_shard_size=max_shard_size)
        preset_files.write_record(preset_dir)

    def load_task_weights(self, filepath):
        """keras-hub's `load_task_weights`; a preset's file is first verified against the
        preset's record, and an unreadable file is named."""
        preset_files.verify_weights(filepath)
        load_preset_weights(super().load_task_weights, filepath)

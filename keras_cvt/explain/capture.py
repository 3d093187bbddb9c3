"""One forward pass that also returns what an explanation reads: the input of every CvT block.

The model is not rebuilt: `keras.models.clone_model` with the model's own layers (no copies,
no new weights) runs its graph again and, through `call_function`, keeps each `CvTBlock`'s
input as an extra output. A model that holds the blocks in a nested functional model (a
keras-hub `CvTImageClassifier` around its `CvTBackbone`) is tapped the same way, one level
down. A zero per-channel offset, a second input, is added to the map the last block reads:
the gradient of a class score with respect to it is the spatial sum of the gradient with
respect to that map, which is all that Grad-CAM needs (see `keras_cvt.explain.cam`).
"""

import dataclasses

import keras

from keras_cvt.layers import ConvEmbedding, CvTBlock


@dataclasses.dataclass(frozen=True)
class Stage:
    """A stage of the model: its token embedding and its blocks, in the order they run."""

    embedding: ConvEmbedding
    blocks: tuple


def _walk(model):
    """The model's ConvEmbedding and CvTBlock layers in the order its graph runs them, nested
    functional models included."""
    found = []
    for layer in model.layers:
        if isinstance(layer, (ConvEmbedding, CvTBlock)):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found.extend(_walk(layer))
    return found


def stages_of(model):
    """The model's stages; a clear error if it holds no CvT blocks."""
    stages, current = [], None
    for layer in _walk(model):
        if isinstance(layer, ConvEmbedding):
            current = (layer, [])
            stages.append(current)
        elif current is None:
            raise ValueError(f"`model` {model.name!r}: block {layer.name!r} comes before any token embedding")
        else:
            current[1].append(layer)
    if not stages or not any(blocks for _, blocks in stages):
        raise ValueError(
            f"`model` {model.name!r} holds no CvT blocks: pass a model built by keras_cvt "
            "(CvT13, CvT, from_hf, CvTBackbone, CvTImageClassifier, a fine-tuned or folded one)"
        )
    return tuple(Stage(embedding, tuple(blocks)) for embedding, blocks in stages)


class Capture:
    """`model` with the inputs of its blocks as extra outputs (see the module docstring).

    Call with images (and optionally the offset); returns `(outputs, block_inputs)`, where
    `block_inputs` maps each block to its input map, or `(map, class_token)` in the stage that
    carries the class token.
    """

    def __init__(self, model):
        if not isinstance(model, keras.Model) or not hasattr(model, "_run_through_graph"):
            raise TypeError(
                f"`model` must be a functional keras.Model built by keras_cvt, got {type(model).__name__}"
            )
        if len(model.inputs) != 1:
            raise ValueError(f"`model` must take one input (images), got {len(model.inputs)}")
        self.model = model
        self.stages = stages_of(model)
        self.blocks = tuple(block for stage in self.stages for block in stage.blocks)
        self.last_block = self.blocks[-1]
        self.offset_input = keras.Input(shape=(1, 1, self.last_block.dim), name="explain_offset")
        self._order = []  # the blocks, in the order their inputs are outputs
        images = keras.Input(batch_shape=model.inputs[0].shape, dtype=model.inputs[0].dtype, name="images")
        taps = []
        outputs = self._run(model, images, taps)
        self.tapped = keras.Model([images, self.offset_input], [outputs, *taps], name=f"{model.name}_explain")

    def _run(self, model, inputs, taps):
        """`model`'s graph run on `inputs` with its own layers, each block's input appended to
        `taps`. `keras.models.clone_model(..., call_function=)` runs the graph this way too, but
        then makes a model of it, which fails here: the offset is an input it does not know."""

        def call(layer, *args, **kwargs):
            if isinstance(layer, CvTBlock):
                block_input = args[0]
                if layer is self.last_block:
                    # The zero offset the class score is differentiated by.
                    if layer.with_cls_token:
                        block_input = [block_input[0] + self.offset_input, block_input[1]]
                    else:
                        block_input = block_input + self.offset_input
                self._order.append(layer)
                taps.extend(block_input if layer.with_cls_token else [block_input])
                return layer(block_input, *args[1:], **kwargs)
            if isinstance(layer, keras.Model) and _walk(layer):
                return self._run(layer, args[0], taps)
            return layer(*args, **kwargs)

        outputs = model._run_through_graph(inputs, call_fn=call)
        return outputs[0] if isinstance(outputs, (list, tuple)) and len(outputs) == 1 else outputs

    def offset(self, batch, dtype="float32"):
        return keras.ops.zeros((batch, 1, 1, self.last_block.dim), dtype=dtype)

    def split(self, results):
        """`(outputs, {block: input})` from the tapped model's results."""
        outputs, taps = results[0], list(results[1:])
        block_inputs = {}
        for block in self._order:
            if block.with_cls_token:
                block_inputs[block] = (taps.pop(0), taps.pop(0))
            else:
                block_inputs[block] = taps.pop(0)
        return outputs, block_inputs

    def __call__(self, images, offset=None):
        images = keras.ops.convert_to_tensor(images)
        if offset is None:
            offset = self.offset(keras.ops.shape(images)[0])
        return self.split(self.tapped([images, offset], training=False))

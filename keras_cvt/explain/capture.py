"""The model split at its last block, with the inputs of all its blocks as outputs: what an
explanation reads, in one forward pass and one backward pass, through Keras' public API only.

- `head`: the model's inputs -> the input of every CvT block (the last block's included).
- `tail`: the last block's input, its normalised tokens (`CvTBlock.normalised_tokens`, what
  its attention reads) and, where it carries the class token, an offset to the class token's
  attention probabilities (zeros; `ConvAttention`'s `class_attention_offset`) -> the model's
  outputs.

`tail(last block's input, its normalised tokens, zeros)` is the rest of the model's forward
pass, each layer run once; the gradients of a class score with respect to the normalised
tokens and to the class token's attention (the class activation maps') are the tail's input
gradients, one backward pass through the tail alone.
Why the normalised tokens and not the block's input: the block reads its input only through
LayerNorm, which does not change when a token is scaled, so each token's gradient is orthogonal
to the token itself and gradient times input vanishes there (keras_cvt.explain.cam).

How, without rebuilding the model or copying weights: `keras.models.clone_model` with a
`clone_function` that returns each layer itself runs the model's graph again on the model's
own layers, and its `call_function` sees each `CvTBlock`'s input tensor; `keras.Model(inputs,
those tensors)` is the head (Keras keeps only the layers they depend on), and
`keras.Model(last block's input, outputs)`, a functional model on an intermediate tensor, is
the tail. A model that holds its blocks in a nested functional model (a keras-hub
`CvTImageClassifier` around its `CvTBackbone`) is split one level down the same way, and the
nested model's tail is joined to the part of the outer graph that reads the nested model's
output.
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


def _flat(value):
    return list(value) if isinstance(value, (list, tuple)) else [value]


def split_at_last_block(model, last_block):
    """`(head, tail, blocks)`: `head` maps the model's input to the flat list of its blocks'
    inputs (a block's `[map, class_token]` as two entries), `tail` maps the last block's
    input, normalised tokens and class attention offset (`last_block`, the model's last
    `CvTBlock`) to the model's outputs, and `blocks` are the blocks in the order their inputs
    come out of `head`."""
    taps, blocks = [], []
    last = {}  # where the last block seen runs: {"tail": the nested tail, "output": ...}
    probes = []

    def call(layer, *args, **kwargs):
        if isinstance(layer, CvTBlock):
            taps.extend(_flat(args[0]))
            blocks.append(layer)
            last.clear()
            if layer is last_block:
                # Layers, so that Keras traces them at the graph's unknown sizes.
                normalised = keras.layers.Lambda(layer.normalised_tokens, name=f"{layer.name}_normalised")(args[0])
                offset = None
                if layer.with_cls_token:
                    offset = keras.layers.Lambda(
                        lambda x: keras.ops.zeros_like(layer.attention_weights(x)[:, :, :1]),
                        name=f"{layer.name}_class_attention_offset",
                    )(args[0])
                probes.extend(probe for probe in (normalised, offset) if probe is not None)
                return layer(*args, normalised=normalised, class_attention_offset=offset, **kwargs)
        elif isinstance(layer, keras.Model) and _walk(layer):
            head, tail, inner_blocks = split_at_last_block(layer, last_block)
            taps.extend(_flat(head(*args, **kwargs)))
            blocks.extend(inner_blocks)
            output = layer(*args, **kwargs)
            last.update(tail=tail, output=output)
            return output
        return layer(*args, **kwargs)

    try:
        graph = keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call)
    except ValueError as error:
        raise TypeError(
            f"`model` must be a functional keras.Model built by keras_cvt, got {type(model).__name__} ({error})"
        ) from None
    head = keras.Model(graph.inputs, taps, name=f"{model.name}_block_inputs")
    name = f"{model.name}_from_last_block"
    if not last:
        last_input = taps[-2:] if blocks[-1].with_cls_token else taps[-1:]
        return head, keras.Model(last_input + probes, graph.output, name=name), tuple(blocks)
    # The last block runs in a nested model: its tail, then what the outer graph does with
    # the nested model's output.
    rest = keras.Model(last["output"], graph.output)
    inputs = [keras.Input(batch_shape=x.shape, dtype=x.dtype) for x in last["tail"].inputs]
    outputs = rest(last["tail"](inputs if len(inputs) > 1 else inputs[0]))
    return head, keras.Model(inputs, outputs, name=name), tuple(blocks)


class Capture:
    """The split model (see the module docstring) and what its results mean.

    Attributes:
        head, tail: `split_at_last_block`'s models.
        blocks: the blocks, in the order they run; `last_block` the last of them.
        stages: the model's `Stage`s.
    """

    def __init__(self, model):
        if not isinstance(model, keras.Model) or getattr(model, "inputs", None) is None:
            raise TypeError(f"`model` must be a functional keras.Model built by keras_cvt, got {type(model).__name__}")
        if len(model.inputs) != 1:
            raise ValueError(f"`model` must take one input (images), got {len(model.inputs)}")
        self.stages = stages_of(model)
        self.last_block = self.stages[-1].blocks[-1]
        self.head, self.tail, self.blocks = split_at_last_block(model, self.last_block)

    def block_inputs(self, images):
        """`{block: its input}` for `images`, a block's input being its map or `(map,
        class_token)`; the head's forward pass."""
        taps = list(self.head(keras.ops.convert_to_tensor(images), training=False))
        found = {}
        for block in self.blocks:
            found[block] = (taps.pop(0), taps.pop(0)) if block.with_cls_token else taps.pop(0)
        return found

    @property
    def probe_indices(self):
        """The indices, among the tail's inputs, of what the class activation maps
        differentiate: the normalised tokens, then the class token's attention offset where
        the last block carries the class token."""
        count = len(self.tail.inputs)
        return list(range(count - 1 - int(self.last_block.with_cls_token), count))

    def tail_inputs(self, block_inputs, keys):
        """The tail's inputs, from `block_inputs` and the last block's number of `keys`: the
        last block's input, its normalised tokens, and zeros for the class token's attention
        where the block carries it."""
        value = block_inputs[self.last_block]
        if not self.last_block.with_cls_token:
            return [value, self.last_block.normalised_tokens(value)]
        offset = keras.ops.zeros((keras.ops.shape(value[0])[0], self.last_block.num_heads, 1, keys), "float32")
        return [*value, self.last_block.normalised_tokens(value), offset]

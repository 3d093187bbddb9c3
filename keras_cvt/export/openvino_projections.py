"""The attention projections of an OpenVINO graph converted from TensorFlow, rewritten to keep
the batch axis first, which OpenVINO's int8 (low-precision) transformations need.

Keras' Dense on tokens `[batch, tokens, channels]` is, in TensorFlow's graph, a reshape of the
tokens to rows `[batch * tokens, channels]`, a MatMul and a reshape back; the TensorFlow front
end then merges the reshape back with the split into heads that follows. The value projection of
CvT-13 at 224 becomes:

    conv [?, 14, 14, 192] -> Reshape [?, 192] -> MatMul -> Reshape [?, 196, 3, 64]

After NNCF quantizes that MatMul, its dequantization (a scale per output channel) follows it,
and the CPU plugin's `ReshapeTransformation`, moving the scale through the last reshape, fails
on a reshape that splits the batch axis it merged ("Requested output shape [1,196,1,1] is
incompatible with input shape", so the int8 file does not compile). `batch_first_projections`
makes the rows `[batch, tokens, channels]` instead, as HuggingFace's ONNX graph has them:

    conv [?, 14, 14, 192] -> Reshape [?, 196, 192] -> MatMul -> Reshape [?, 196, 3, 64]

The same multiply-adds on the same rows: the float32 outputs do not change (see the tests).
"""

import numpy as np
from openvino import opset13


def _single_reader(output):
    readers = output.get_target_inputs()
    return next(iter(readers)).get_node() if len(readers) == 1 else None


def _constant(node):
    return node.get_data() if node.get_type_name() == "Constant" else None


def _operand(node, index):
    return node.input(index).get_source_output().get_node()


# Operations that act on each row alone, whatever the rows' layout (with broadcasting operands).
_ELEMENTWISE = ("Add", "Multiply", "Subtract", "Divide", "Power")
_UNARY = ("Swish", "Gelu", "Relu", "Sigmoid", "Tanh", "Sqrt", "Exp")
_LAST_AXIS = ("ReduceMean", "ReduceSum", "MVN")


def _per_row_constant(node):
    """A constant that broadcasts over rows: a scalar, or one value per channel."""
    value = _constant(node)
    return value is not None and (value.ndim <= 1 or (value.ndim == 2 and value.shape[0] == 1))


def _row_wise(node, region):
    """Whether `node`, whose other inputs are in `region` (the tensors made from the rows), computes
    each row from that row alone: a MatMul by a constant matrix, elementwise operations with
    per-channel constants, activations, or a reduction over the channels."""
    kind = node.get_type_name()
    operands = [_operand(node, i) for i in range(node.get_input_size())]
    if kind == "MatMul":
        weights = _constant(operands[1])
        return operands[0] in region and weights is not None and weights.ndim == 2 and not (
            node.get_attributes()["transpose_a"]
        )
    if kind in _ELEMENTWISE:
        return all(o in region or _per_row_constant(o) for o in operands)
    if kind in _UNARY:
        return operands[0] in region and all(_constant(o) is not None for o in operands[1:])
    if kind in _LAST_AXIS:
        axes = _constant(operands[1])
        keep = node.get_attributes().get("keep_dims", True)
        return operands[0] in region and axes is not None and axes.size == 1 and int(axes.reshape(())) in (1, -1) and keep
    return False


def _split_target(node, tokens):
    """The shape `[-1, ...]` that the Reshape `node` gives `tokens` rows per image, or None."""
    if node.get_type_name() != "Reshape":
        return None
    target = _constant(_operand(node, 1))
    shape = node.input(0).get_partial_shape()
    if target is None or target.ndim != 1 or len(target) < 2 or int(target[0]) != -1 or (target[1:] <= 0).any():
        return None
    if shape.rank.get_length() != 2 or shape[1].is_dynamic:
        return None
    return target if int(np.prod(target[1:])) == tokens * shape[1].get_length() else None


def _region(rows, tokens):
    """`(nodes, exits)`: the row-wise nodes made from `rows`, and the Reshapes `[-1, ...]` that
    read them, or None where something else reads them."""
    kinds = ("MatMul", *_ELEMENTWISE, *_UNARY, *_LAST_AXIS)
    region, exits, stack = {rows}, [], [rows]
    while stack:
        for output in stack.pop().outputs():
            for reader in output.get_target_inputs():
                node = reader.get_node()
                if node in region or node in exits:
                    continue
                if _split_target(node, tokens) is not None:
                    exits.append(node)
                elif node.get_type_name() in kinds:
                    region.add(node)
                    stack.append(node)
                else:
                    return None
    nodes = [node for node in region if node is not rows]
    # Checked once the region is whole: an operation's operands may join it in any order.
    return (nodes, exits) if all(_row_wise(node, region) for node in nodes) else None


def batch_first_projections(model):
    """Rewrites each `Reshape(x -> [rows, channels])` of `model` (x of rank 3 or more, batch
    first, the rest static) whose rows go through row-wise operations with a MatMul among them
    (LayerNorm, Dense layers, activations) into Reshapes `[-1, ...]`, so that the rows keep the
    batch axis: `[batch, tokens, channels]`, in the same order. Returns how many were rewritten."""
    count = 0
    for rows in model.get_ordered_ops():
        if rows.get_type_name() != "Reshape":
            continue
        x = rows.input(0).get_source_output()
        x_shape, rows_shape = x.get_partial_shape(), rows.get_output_partial_shape(0)
        if x_shape.rank.is_dynamic or x_shape.rank.get_length() < 3 or rows_shape.rank.is_dynamic:
            continue
        if rows_shape.rank.get_length() != 2 or any(d.is_dynamic for d in [*list(x_shape)[1:], rows_shape[1]]):
            continue
        # Each image's values, row-major, are `tokens` rows of `channels`: [batch, tokens,
        # channels] holds them in the same order as [batch * tokens, channels].
        per_image = int(np.prod([d.get_length() for d in list(x_shape)[1:]]))
        channels = rows_shape[1].get_length()
        tokens = per_image // channels
        if tokens * channels != per_image:
            continue
        found = _region(rows, tokens)
        if found is None or not found[1] or not any(n.get_type_name() == "MatMul" for n in found[0]):
            continue
        nodes, exits = found
        # 0 with special_zero: the batch copied.
        batch_rows = opset13.reshape(x, np.array([0, tokens, channels], np.int64), True)
        for reader in rows.output(0).get_target_inputs():
            reader.replace_source_output(batch_rows.output(0))
        for node in nodes:
            if node.get_type_name() in _LAST_AXIS:
                node.input(1).replace_source_output(opset13.constant(np.array([-1], np.int64)).output(0))
        for exit_ in exits:
            target = _split_target(exit_, tokens)
            split = opset13.reshape(exit_.input(0).get_source_output(), np.array([0, *target[1:]], np.int64), True)
            split.set_friendly_name(exit_.get_friendly_name())
            for reader in exit_.output(0).get_target_inputs():
                reader.replace_source_output(split.output(0))
        count += 1
    model.validate_nodes_and_infer_types()
    return count

"""The operations of `keras_cvt.LayerNorm.call`, written once, and how to find them in a graph.

Three graph rewrites replace each LayerNorm of a converted model with a runtime's fused kernel:
the frozen TensorFlow function (`keras_cvt.inference.frozen`, oneDNN's LayerNorm), the ONNX
export (`keras_cvt.export.onnx`, ONNX's LayerNormalization) and the OpenVINO export
(`keras_cvt.export.openvino`, MVN). They all read `STEPS`, the operations that `call` runs, and
`match` walks them back from a graph's node; each runtime only says how its converter writes
each operation (its `Form`s) and checks what only it can (constants, axes, dtypes).
`tests/test_layer_norm_ops.py` traces `LayerNorm.call` and holds it to `STEPS`, so an edit of
`call` that the rewrites would no longer recognise fails there, not silently in the exports.

Pure data and plain Python: importing it imports nothing.
"""

import dataclasses

# The inputs of the operations: the tokens, the layer's weights and its epsilon.
INPUTS = ("x", "gamma", "beta", "epsilon")


@dataclasses.dataclass(frozen=True)
class Step:
    """One operation of `LayerNorm.call`: `name` = `operation(*operands)`, where each operand
    names an earlier step or one of `INPUTS`. Means are over the last axis, keeping it."""

    name: str
    operation: str
    operands: tuple


# LayerNorm(x) = (x - mean(x)) * (rsqrt(mean((x - mean(x))**2) + epsilon) * gamma) + beta: gamma
# multiplies the per-token factor before the large multiply (see `keras_cvt.LayerNorm`).
STEPS = (
    Step("mean", "mean", ("x",)),
    Step("centered", "subtract", ("x", "mean")),
    Step("square", "square", ("centered",)),
    Step("variance", "mean", ("square",)),
    Step("shifted", "add", ("variance", "epsilon")),
    Step("inverse", "rsqrt", ("shifted",)),
    Step("scale", "multiply", ("inverse", "gamma")),
    Step("scaled", "multiply", ("centered", "scale")),
    Step("output", "add", ("scaled", "beta")),
)
OUTPUT = STEPS[-1].name
# The steps that reduce over the last axis, whose axes a runtime checks.
MEANS = tuple(step.name for step in STEPS if step.operation == "mean")
_COMMUTATIVE = ("add", "multiply")


@dataclasses.dataclass(frozen=True)
class Form:
    """How a runtime's graph writes one operation.

    Attributes:
        types: the op types it takes, outermost first, one tuple of alternatives per op: ONNX
            writes rsqrt(a) as `Reciprocal(Sqrt(a))`, `(("Reciprocal",), ("Sqrt",))`. Each op but
            the last reads the next one as its input 0.
        operands: where the innermost op reads the operands: "first" (input 0; other inputs,
            such as a reduction's axes, are the runtime's to check), "both" (one operand as
            inputs 0 and 1: square(a) written `Mul(a, a)`) or "pair" (two operands as inputs 0
            and 1, in either order for add and multiply).
    """

    types: tuple
    operands: str


def forms(mean, subtract, square, add, rsqrt, multiply):
    """A runtime's `Form` of each operation of `STEPS`, by operation."""
    return {"mean": mean, "subtract": subtract, "square": square, "add": add, "rsqrt": rsqrt, "multiply": multiply}


class GraphView:
    """What `match` needs of a graph; one subclass per runtime.

    A node is an operation, a value one of its outputs; values are told apart by `value_key`,
    nodes by `node_key`."""

    def op_type(self, node):
        raise NotImplementedError

    def inputs(self, node):
        """The values `node` reads, in order."""
        raise NotImplementedError

    def producer(self, value):
        """The node that computes `value`, or None (a graph input)."""
        raise NotImplementedError

    def value_key(self, value):
        raise NotImplementedError

    def node_key(self, node):
        raise NotImplementedError

    def readers(self, node):
        """The `node_key`s of the nodes that read `node`'s outputs (a graph output counts as a
        reader outside any match)."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Match:
    """A LayerNorm found in a graph.

    Attributes:
        nodes: {step name: the (outermost) node of that step}.
        values: {input name: the value it reads}: `x`, `gamma`, `beta`, `epsilon`.
        members: every node of the match (the inner ops of multi-op forms included).
    """

    nodes: dict
    values: dict
    members: tuple


_STEPS = {step.name: step for step in STEPS}


def match(graph, node, runtime_forms):
    """The `Match` of the LayerNorm whose last operation is `node` in `graph` (a `GraphView`),
    its ops written as `runtime_forms` says, or None."""
    found = _bind_step(graph, runtime_forms, OUTPUT, node, ({}, {}, ()))
    return None if found is None else Match(*found)


def exclusive(graph, found):
    """Whether nothing outside `found` reads its intermediate results, so that replacing its
    output leaves none of them needed."""
    inside = {graph.node_key(node) for node in found.members}
    output = graph.node_key(found.nodes[OUTPUT])
    return all(
        reader in inside
        for node in found.members
        if graph.node_key(node) != output
        for reader in graph.readers(node)
    )


def _bind_value(graph, runtime_forms, name, value, state):
    if name in _STEPS:
        producer = graph.producer(value)
        return None if producer is None else _bind_step(graph, runtime_forms, name, producer, state)
    nodes, values, members = state
    if name in values:
        return state if graph.value_key(values[name]) == graph.value_key(value) else None
    return nodes, {**values, name: value}, members


def _bind_step(graph, runtime_forms, name, node, state):
    nodes, values, members = state
    if name in nodes:
        return state if graph.node_key(nodes[name]) == graph.node_key(node) else None
    step = _STEPS[name]
    form = runtime_forms[step.operation]
    chain, current = [], node
    for position, types in enumerate(form.types):
        if current is None or graph.op_type(current) not in types:
            return None
        chain.append(current)
        if position < len(form.types) - 1:
            inputs = graph.inputs(current)
            current = graph.producer(inputs[0]) if inputs else None
    inputs = graph.inputs(current)
    if form.operands == "first":
        candidates = [inputs[:1]] if inputs else []
    elif form.operands == "both":
        same = len(inputs) == 2 and graph.value_key(inputs[0]) == graph.value_key(inputs[1])
        candidates = [inputs[:1]] if same else []
    else:
        candidates = [inputs] if len(inputs) == 2 else []
        if candidates and step.operation in _COMMUTATIVE:
            candidates.append(inputs[::-1])
    state = ({**nodes, name: node}, values, members + tuple(chain))
    for operands in candidates:
        bound = state
        for operand, value in zip(step.operands, operands):
            bound = _bind_value(graph, runtime_forms, operand, value, bound)
            if bound is None:
                break
        if bound is not None:
            return bound
    return None

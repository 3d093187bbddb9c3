"""The gradient of a score with respect to one input of a Keras model, on its backend.

Keras 3 has no backend-neutral gradient: each backend differentiates its own way (a tape,
a function transform, autograd). This is the only backend-specific part of
`keras_cvt.explain`, and each branch imports its backend only when it runs.
"""

import keras


def input_gradient(model, inputs, index, score):
    """`(outputs, gradient)`: `model(inputs)` and the gradient of `score(outputs)` (a scalar)
    with respect to `inputs[index]`, in one forward and one backward pass. `inputs` is a list
    (one entry for a model of one input)."""
    backend = keras.backend.backend()
    inputs = [keras.ops.convert_to_tensor(x) for x in inputs]

    def run(feed):
        return model(feed if len(feed) > 1 else feed[0], training=False)

    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(inputs[index])
            outputs = run(inputs)
            value = score(outputs)
        return outputs, tape.gradient(value, inputs[index])
    if backend == "jax":
        import jax

        trainable = [variable.value for variable in model.trainable_variables]
        non_trainable = [variable.value for variable in model.non_trainable_variables]

        def forward(variable_input):
            feed = inputs[:index] + [variable_input] + inputs[index + 1 :]
            outputs, _ = model.stateless_call(trainable, non_trainable, feed if len(feed) > 1 else feed[0], training=False)
            return score(outputs), outputs

        (_, outputs), gradient = jax.value_and_grad(forward, has_aux=True)(inputs[index])
        return outputs, gradient
    if backend == "torch":
        import torch

        inputs[index] = inputs[index].detach().requires_grad_(True)
        outputs = run(inputs)
        (gradient,) = torch.autograd.grad(score(outputs), inputs[index])
        return outputs.detach(), gradient
    raise NotImplementedError(f"keras_cvt.explain has no gradient for the {backend!r} backend")

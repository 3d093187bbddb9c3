"""The gradient of a score with respect to one input of a Keras model, on its backend.

Keras 3 has no backend-neutral gradient: each backend differentiates its own way (a tape,
a function transform, autograd). This is the only backend-specific part of
`keras_cvt.explain`, and each branch imports its backend only when it runs.
"""

import keras


def input_gradient(model, inputs, index, score):
    """`(results, gradient)`: `model(inputs)` and the gradient of `score(results[0])` (a
    scalar) with respect to `inputs[index]`, in one forward and one backward pass."""
    backend = keras.backend.backend()
    inputs = [keras.ops.convert_to_tensor(x) for x in inputs]
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(inputs[index])
            results = model(inputs, training=False)
            value = score(results[0])
        return results, tape.gradient(value, inputs[index])
    if backend == "jax":
        import jax

        trainable = [variable.value for variable in model.trainable_variables]
        non_trainable = [variable.value for variable in model.non_trainable_variables]

        def forward(variable_input):
            feed = inputs[:index] + [variable_input] + inputs[index + 1 :]
            results, _ = model.stateless_call(trainable, non_trainable, feed, training=False)
            return score(results[0]), results

        (_, results), gradient = jax.value_and_grad(forward, has_aux=True)(inputs[index])
        return results, gradient
    if backend == "torch":
        import torch

        inputs[index] = inputs[index].detach().requires_grad_(True)
        results = model(inputs, training=False)
        (gradient,) = torch.autograd.grad(score(results[0]), inputs[index])
        return [result.detach() for result in results], gradient
    raise NotImplementedError(f"keras_cvt.explain has no gradient for the {backend!r} backend")

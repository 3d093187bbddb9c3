"""The gradients of a score with respect to inputs of a Keras model, on its backend.

Keras 3 has no backend-neutral gradient: each backend differentiates its own way (a tape,
a function transform, autograd). This is the only backend-specific part of
`keras_cvt.explain`, and each branch imports its backend only when it runs.
"""

import keras


def input_gradients(model, inputs, indices, score):
    """`(outputs, gradients)`: `model(inputs)` and the gradients of `score(outputs)` (a
    scalar) with respect to `inputs[i]` for each `i` of `indices`, in one forward and one
    backward pass. `inputs` is a list (one entry for a model of one input)."""
    backend = keras.backend.backend()
    inputs = [keras.ops.convert_to_tensor(x) for x in inputs]
    indices = list(indices)

    def run(feed):
        return model(feed if len(feed) > 1 else feed[0], training=False)

    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            for index in indices:
                tape.watch(inputs[index])
            outputs = run(inputs)
            value = score(outputs)
        return outputs, tape.gradient(value, [inputs[index] for index in indices])
    if backend == "jax":
        import jax

        trainable = [variable.value for variable in model.trainable_variables]
        non_trainable = [variable.value for variable in model.non_trainable_variables]

        def forward(*variable_inputs):
            feed = list(inputs)
            for index, value in zip(indices, variable_inputs):
                feed[index] = value
            outputs, _ = model.stateless_call(trainable, non_trainable, feed if len(feed) > 1 else feed[0], training=False)
            return score(outputs), outputs

        argnums = tuple(range(len(indices)))
        (_, outputs), gradients = jax.value_and_grad(forward, argnums=argnums, has_aux=True)(
            *[inputs[index] for index in indices]
        )
        return outputs, list(gradients)
    if backend == "torch":
        import torch

        for index in indices:
            inputs[index] = inputs[index].detach().requires_grad_(True)
        outputs = run(inputs)
        gradients = torch.autograd.grad(score(outputs), [inputs[index] for index in indices])
        return outputs.detach(), list(gradients)
    raise NotImplementedError(f"keras_cvt.explain has no gradient for the {backend!r} backend")

"""keras_cvt.training and examples/train.py, examples/evaluate.py: distribution, fine-tuning,
the recipe, and that a small CvT actually learns (fault tolerance: tests/test_training_faults.py).

Runs that need a fresh TensorFlow (logical devices, a cluster) go through subprocesses
(tests/training_worker.py); the rest runs here.
"""

import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import keras_cvt
from keras_cvt import training
from keras_cvt.layers import ClassToken
from tests.conftest import ROOT, TINY_CONFIG
from tests.training_worker import load_example

SMALL = {"depths": (1, 1, 1), "embed_dims": (16, 32, 48), "num_heads": (1, 2, 3)}
SMALL_ARGS = ["--depths", "1,1,1", "--embed-dims", "16,32,48", "--num-heads", "1,2,3"]
TINY = {k: TINY_CONFIG[k] for k in ("depths", "embed_dims", "num_heads")}
TINY_ARGS = ["--depths", "1,2,2", "--embed-dims", "16,32,48", "--num-heads", "1,2,3"]


def flags(**options):
    """`--option value` pairs for the examples' command lines."""
    return [item for key, value in options.items() for item in (f"--{key.replace('_', '-')}", str(value))]


def subprocess_env(**extra):
    # The examples import keras_cvt as an installed package; the checkout stands in for it.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1", **extra)
    return env


def write_image_folder(root, per_class, classes=3, size=(40, 48), seed=0):
    """Classes told apart by their dominant colour channel, on noise: learnable in a few steps."""
    rng = np.random.RandomState(seed)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            image = rng.randint(0, 60, size + (3,))
            image[..., c % 3] += 150 + 40 * (c // 3)
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


def expected_no_decay(model):
    """Paths of LayerNorm/BatchNorm weights, every layer's bias and the class token, by layer type."""
    paths = set()
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, (keras.layers.LayerNormalization, keras.layers.BatchNormalization, ClassToken)):
            paths |= {v.path for v in layer.trainable_weights}
        bias = getattr(layer, "bias", None)
        if isinstance(bias, keras.Variable):
            paths.add(bias.path)
    return paths


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# The recipe.


def test_weight_decay_spares_exactly_norms_biases_and_class_token():
    model = keras_cvt.CvT(**SMALL, input_shape=(32, 32, 3), classes=5)
    rng = np.random.RandomState(0)
    for v in model.trainable_variables:
        v.assign(rng.uniform(0.5, 1.5, v.shape).astype("float32"))  # biases start at 0: make decay visible
    optimizer = training.make_optimizer(model, learning_rate=0.1, weight_decay=0.5)
    before = {v.path: v.numpy() for v in model.trainable_variables}
    optimizer.apply_gradients([(np.zeros(v.shape, "float32"), v) for v in model.trainable_variables])

    after = {v.path: v.numpy() for v in model.trainable_variables}
    spared = {p for p, old in before.items() if np.array_equal(after[p], old)}
    assert spared == expected_no_decay(model)
    for v in model.trainable_variables:
        if v.path not in spared:
            # Decoupled decay: w <- w - lr * wd * w, with nothing else moving.
            np.testing.assert_allclose(after[v.path], before[v.path] * (1 - 0.1 * 0.5), rtol=1e-6)
    names = {p.rsplit("/", 1)[-1] for p in spared}
    assert names == {"gamma", "beta", "bias", "token"}
    assert "stage2_cls_token/token" in spared
    assert any("_bn/" in p for p in spared) and any("norm1/" in p for p in spared)
    assert (
        "stage0_block0/attn/conv_proj_q/kernel" not in spared
    )  # depthwise kernels decay, as in the original


def _recipe_rates(peak, total_steps, warmup_steps, warmup_lr, min_lr, steps):
    """The recipe's schedule in float64: linear warm-up, then cosine to `min_lr`, then flat."""
    steps = np.asarray(steps, np.float64)
    progress = np.clip((steps - warmup_steps) / max(total_steps - warmup_steps, 1), 0.0, 1.0)
    cosine = min_lr + 0.5 * (peak - min_lr) * (1.0 + np.cos(np.pi * progress))
    return np.where(steps < warmup_steps, warmup_lr + (peak - warmup_lr) * steps / max(warmup_steps, 1), cosine)


def test_learning_rate_schedule_is_keras_cosine_decay_with_warmup():
    assert training.scaled_learning_rate(256) == pytest.approx(2.5e-4)
    assert training.scaled_learning_rate(2048) == pytest.approx(2e-3)
    # The whole default recipe (300 epochs, 5 of warm-up) at 4 steps per epoch and a global
    # batch of 2048, and 20 steps past its end.
    peak, epochs, steps_per_epoch = training.scaled_learning_rate(2048), training.EPOCHS, 4
    schedule = training.recipe_schedule(peak, epochs, steps_per_epoch)
    assert type(schedule) is keras.optimizers.schedules.CosineDecay
    total, warmup = epochs * steps_per_epoch, training.WARMUP_EPOCHS * steps_per_epoch
    steps = np.arange(total + 20)
    lr = np.array([float(schedule(step)) for step in steps])
    exact = _recipe_rates(peak, total, warmup, training.WARMUP_LEARNING_RATE, training.MIN_LEARNING_RATE, steps)
    # Float32 arithmetic: the cosine of a float32 fraction, times the peak; the rest is exact.
    np.testing.assert_allclose(lr, exact, rtol=0, atol=8 * np.finfo(np.float32).eps * peak)
    assert lr[0] == np.float32(training.WARMUP_LEARNING_RATE) and lr[warmup] == np.float32(peak)
    assert np.all(lr[total:] == lr[total]) and lr[total] == pytest.approx(training.MIN_LEARNING_RATE, rel=1e-6)
    assert np.all(np.diff(lr[: warmup + 1]) > 0) and np.all(np.diff(lr[warmup : total + 1]) <= 0)
    # The hand-written schedule it replaced (keras_cvt 0.2) computed the same formula.
    old = np.array([_keras_cvt_0_2_schedule(peak, total, warmup, step) for step in steps])
    np.testing.assert_allclose(lr, old, rtol=0, atol=8 * np.finfo(np.float32).eps * peak)
    # Saved and loaded by Keras alone: no keras_cvt class in its config.
    restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert [float(restored(s)) for s in (0, 37, total)] == [lr[0], lr[37], lr[total]]

    # A small batch scales the peak below the recipe's absolute floor: the floor gives way.
    peak = training.scaled_learning_rate(8)
    small = np.array(
        [float(training.recipe_schedule(peak, epochs=10, steps_per_epoch=4)(step)) for step in range(40)]
    )
    assert peak < training.MIN_LEARNING_RATE
    assert small[0] == pytest.approx(training.WARMUP_LEARNING_RATE)
    np.testing.assert_allclose(small[20:], peak, rtol=1e-6)  # flat at the peak, never rising above it
    # All warm-up (epochs <= warm-up epochs): the floor one step after the end, as before.
    short = training.recipe_schedule(1e-3, epochs=2, steps_per_epoch=3)
    rates = [float(short(step)) for step in range(8)]
    np.testing.assert_allclose(rates, _recipe_rates(1e-3, 6, 6, 1e-6, 1e-5, range(8)), rtol=1e-6)
    assert rates[6] == pytest.approx(1e-3) and rates[7] == pytest.approx(1e-5)
    with pytest.raises(ValueError, match="`total_steps` must be an integer >= 1"):
        training.recipe_schedule(1e-3, epochs=0, steps_per_epoch=3)


def _keras_cvt_0_2_schedule(peak, total, warmup, step, warmup_lr=1e-6, min_lr=1e-5):
    """keras_cvt 0.2's WarmupCosineDecay.__call__, as it was, in float32."""
    step = tf.cast(step, tf.float32)
    rising = warmup_lr + (peak - warmup_lr) * step / max(warmup, 1)
    progress = tf.clip_by_value((step - warmup) / max(total - warmup, 1), 0.0, 1.0)
    cosine = min_lr + 0.5 * (peak - min_lr) * (1.0 + tf.cos(np.pi * progress))
    return float(tf.where(step < warmup, rising, cosine))


def test_warmup_cosine_decay_keeps_its_name_and_saved_configs():
    # The class of keras_cvt 0.2, now Keras' CosineDecay under its arguments: its configs,
    # in optimizers saved then, still load and give the same rates.
    config = {
        "peak_learning_rate": 1e-3,
        "total_steps": 100,
        "warmup_steps": 10,
        "warmup_learning_rate": 1e-6,
        "min_learning_rate": 1e-5,
    }
    # What keras.optimizers.schedules.serialize wrote for it then.
    saved = {
        "module": "keras_cvt.training.recipe",
        "class_name": "WarmupCosineDecay",
        "config": config,
        "registered_name": "keras_cvt>WarmupCosineDecay",
    }
    schedule = keras.optimizers.schedules.deserialize(saved)
    assert isinstance(schedule, keras.optimizers.schedules.CosineDecay)
    assert schedule.get_config() == config
    lr = np.array([float(schedule(step)) for step in range(120)])
    np.testing.assert_allclose(lr, _recipe_rates(1e-3, 100, 10, 1e-6, 1e-5, range(120)), rtol=0, atol=1e-9)
    assert lr[5] == pytest.approx(1e-6 + (1e-3 - 1e-6) / 2) and lr[55] == pytest.approx(1e-5 + (1e-3 - 1e-5) / 2)
    restored = training.WarmupCosineDecay.from_config(schedule.get_config())
    assert float(restored(37)) == lr[37]
    with pytest.raises(ValueError, match="`warmup_steps` must be <= `total_steps`"):
        training.WarmupCosineDecay(1e-3, total_steps=10, warmup_steps=11)


def test_random_resized_crop_follows_torchvision():
    image = tf.constant(np.random.RandomState(0).randint(0, 256, (30, 50, 3)), tf.uint8)
    for _ in range(5):
        out = training.random_resized_crop(image, 24)
        assert out.shape == (24, 24, 3) and out.dtype == tf.float32
        assert 0.0 <= float(tf.reduce_min(out)) and float(tf.reduce_max(out)) <= 255.0
    # The whole image at its own ratio is the only crop that fits: it must be taken.
    whole = training.random_resized_crop(image, 24, scale=(1.0, 1.0), ratio=(50 / 30, 50 / 30))
    expected = tf.clip_by_value(
        tf.image.resize(tf.cast(image, tf.float32), (24, 24), "bicubic", antialias=True), 0, 255
    )
    np.testing.assert_allclose(whole.numpy(), expected.numpy(), atol=1e-3)
    # No draw fits a 4 x 200 strip at ratios 3/4..4/3: the fallback is the centre 4 x 5 crop.
    strip = tf.constant(np.arange(4 * 200 * 3).reshape(4, 200, 3) % 251, tf.uint8)
    fallback = training.random_resized_crop(strip, 8, scale=(0.9, 1.0))
    centre = tf.clip_by_value(
        tf.image.resize(tf.cast(strip[:, 97:102], tf.float32), (8, 8), "bicubic", antialias=True), 0, 255
    )
    np.testing.assert_allclose(fallback.numpy(), centre.numpy(), atol=1e-3)


# ---------------------------------------------------------------------------------------------
# Distribution.


@pytest.mark.slow
def test_mirrored_strategy_keeps_replicas_identical(tmp_path):
    data = write_image_folder(tmp_path / "images", per_class=12)
    result = tmp_path / "result.json"
    args = [*SMALL_ARGS, *flags(image_folder=data, image_size=32, epochs=3, batch_size=4, learning_rate=2e-3)]
    args += flags(warmup_epochs=1, output_dir=tmp_path / "run", backup_every=0, seed=1, verbose=0)
    subprocess.run(
        [sys.executable, "-m", "tests.training_worker", "mirrored", str(result), "--", *args],
        cwd=ROOT,
        env=subprocess_env(),
        check=True,
        timeout=600,
    )
    r = json.loads(result.read_text())
    assert r["replicas"] == 2 and r["copies"] == 2
    # 33 training images, global batch 8: 4 steps per epoch.
    assert r["iterations"] == 12
    assert max(r["model_spread"].values()) == 0.0, {k: v for k, v in r["model_spread"].items() if v}
    assert max(r["optimizer_spread"].values()) == 0.0
    assert len(r["optimizer_spread"]) > len(r["trainable"])  # moments and the step counter too
    loss = r["loss"]
    assert np.all(np.isfinite(loss)) and loss[-1] < loss[0]
    # Weight decay under the strategy spares the same variables as without it.
    model = keras_cvt.CvT(**SMALL, input_shape=(32, 32, 3), classes=3)
    assert set(r["trainable"]) == {v.path for v in model.trainable_variables}
    assert set(r["decayed"]) == set(r["trainable"]) - expected_no_decay(model)


@pytest.mark.slow
def test_multi_worker_training_fine_tunes_on_two_workers(tmp_path, tiny_reference):
    weights, _, _ = tiny_reference
    data = write_image_folder(tmp_path / "images", per_class=11)
    ports = [free_port(), free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    workers = []
    for index in range(2):
        scratch = tmp_path / f"tmp{index}"
        scratch.mkdir()
        config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        # Each worker gets its own output directory, as if on its own disk, to show which one writes.
        args = [*TINY_ARGS, *flags(weights=weights, image_folder=data, image_size=32, epochs=2, batch_size=4)]
        args += flags(learning_rate=1e-3, warmup_epochs=0, output_dir=tmp_path / f"out{index}", backup_every=3)
        args += flags(seed=1, verbose=0)
        command = [sys.executable, "-m", "tests.training_worker", "multiworker", str(tmp_path / f"w{index}.npz")]
        command += ["--", *args]
        workers.append(
            subprocess.Popen(
                command,
                cwd=ROOT,
                env=subprocess_env(TF_CONFIG=config, TMPDIR=str(scratch)),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = []
    try:
        for worker in workers:
            outputs.append(worker.communicate(timeout=600)[0])
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output[-5000:]

    chief, other = (dict(np.load(tmp_path / f"w{i}.npz")) for i in range(2))
    assert chief.keys() == other.keys()
    for key in chief:
        np.testing.assert_array_equal(chief[key], other[key], err_msg=key)
    # 30 training images (10% of each class held out), 2 workers x 4: 3 steps per epoch.
    assert int(chief["__iterations__"]) == 6
    assert chief["predictions/kernel"].shape == (48, 3)
    assert "Validation top-1" in outputs[0] and "Validation top-1" in outputs[1]
    assert "2 replica(s), global batch 8" in outputs[0]

    out = tmp_path / "out0"
    assert (out / "checkpoints" / "last.weights.h5").is_file()
    assert (out / "checkpoints" / "best.weights.h5").is_file()
    assert any((out / "logs").rglob("events.out.tfevents.*"))
    assert os.listdir(out / "backup") == []  # deleted once training completed
    assert not (tmp_path / "out1").exists()
    assert list((tmp_path / "tmp1").iterdir()) == []  # the non-chief's temporary files are gone
    # The chief's checkpoint is the shared final model.
    restored = keras_cvt.CvT(
        **TINY, input_shape=(32, 32, 3), classes=3, weights=out / "checkpoints" / "last.weights.h5"
    )
    for v in restored.weights:
        np.testing.assert_array_equal(v.numpy(), chief[v.path], err_msg=v.path)


# ---------------------------------------------------------------------------------------------
# Learning, TFDS, fine-tuning, evaluation.


@pytest.mark.slow
def test_small_cvt_learns_digits(tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = tf.image.resize(digits.images[..., None] * (255 / 16), (32, 32)).numpy()
    images = np.repeat(np.clip(np.round(images), 0, 255).astype(np.uint8), 3, axis=-1)
    order = np.random.RandomState(0).permutation(len(images))
    train_idx, val_idx = order[:1437], order[1437:]
    keras.utils.set_random_seed(0)
    strategy = tf.distribute.get_strategy()
    train_source = training.array_source(images[train_idx], digits.target[train_idx], 10)
    val_source = training.array_source(images[val_idx], digits.target[val_idx], 10)
    # Digits are not photos: gentle crops, no flips (a mirrored 2 is no 2).
    augmentation = training.Augmentation(crop_scale=(0.7, 1.0), crop_ratio=(0.9, 1.1), flip=False)
    train_data = training.train_dataset(strategy, train_source, 32, 32, augmentation, seed=0)
    val_data = training.eval_dataset(strategy, val_source, 32, 128, crop_ratio=None)
    epochs, steps = 6, 1437 // 32
    model = training.build_model(SMALL, 10, 32, drop_path_rate=0.0)
    # Six epochs, not 300: a peak well above the recipe's 2.5e-4 * 32 / 256, warm-up of one epoch.
    optimizer = training.make_optimizer(model, training.recipe_schedule(3e-3, epochs, steps, warmup_epochs=1))
    training.compile_model(model, optimizer)
    history, resumed = training.fit(
        model,
        train_data,
        epochs=epochs,
        steps_per_epoch=steps,
        output_dir=str(tmp_path / "run"),
        validation_data=val_data,
        verbose=0,
    )
    top1, top5 = training.evaluate(model, val_data)
    assert resumed == (0, 0)
    assert top1 >= 0.90, history
    assert top5 >= top1
    assert history["val_top1"][-1] == pytest.approx(top1)


@pytest.mark.slow
def test_tfds_training_then_evaluation_from_the_command_line(tmp_path, capsys):
    import tensorflow_datasets as tfds

    train, evaluate = load_example("train"), load_example("evaluate")
    out = tmp_path / "run"
    data = ["--dataset", "tf_flowers", "--data-dir", str(tmp_path / "tfds")]
    try:
        with tfds.testing.mock_data(num_examples=20):
            train.main(
                [
                    *data,
                    *SMALL_ARGS,
                    "--image-size",
                    "32",
                    "--epochs",
                    "2",
                    "--batch-size",
                    "4",
                    "--output-dir",
                    str(out),
                    "--strategy",
                    "none",
                    "--mixed-precision",
                    "bfloat16",
                    "--randaugment",
                    "0.5",
                    "--mixup",
                    "0.8",
                    "--cutmix",
                    "1.0",
                    "--seed",
                    "0",
                    "--verbose",
                    "0",
                ]
            )
            trained = capsys.readouterr().out
            evaluate.main(
                [
                    *data,
                    *SMALL_ARGS,
                    "--image-size",
                    "32",
                    "--weights",
                    str(out / "checkpoints" / "last.weights.h5"),
                    "--strategy",
                    "none",
                ]
            )
            evaluated = capsys.readouterr().out
    finally:
        keras.mixed_precision.set_global_policy("float32")
    # tf_flowers has no validation split: 'train[:90%]' / 'train[90%:]' (the mock serves 20 images for each).
    assert "1 replica(s), global batch 4, 5 steps per epoch" in trained and "5 classes" in trained
    assert "Optimizer steps: 10" in trained  # uninterrupted: epochs x steps per epoch
    final = trained.strip().splitlines()[-1]
    assert final.startswith("Validation top-1 ") and final.endswith("(20 images)")
    # The same weights, images and transform: the same numbers as the training's last line.
    top1, top5 = final.split()[2], final.split()[4]
    assert f"top-1 {top1} top-5 {top5} (20 images)" in evaluated
    assert (out / "checkpoints" / "best.weights.h5").is_file()


@pytest.mark.slow
def test_fine_tuning_replaces_the_classifier(tmp_path, tiny_reference):
    weights, _, _ = tiny_reference
    original = keras_cvt.CvT(**TINY_CONFIG, input_shape=(64, 64, 3), weights=weights)
    model = training.build_model(TINY, num_classes=4, image_size=64, weights=weights)
    loaded = {v.path: v.numpy() for v in original.weights}
    backbone = [v for v in model.weights if not v.path.startswith("predictions/")]
    assert len(backbone) == len(loaded) - 2
    for v in backbone:
        np.testing.assert_array_equal(v.numpy(), loaded[v.path], err_msg=v.path)
    head = model.get_layer("predictions")
    assert head.kernel.shape == (48, 4) and head.bias.shape == (4,)
    assert model.output.shape == (None, 4)
    # Same classes as the file: its classifier is kept.
    same = training.build_model(TINY, num_classes=10, image_size=64, weights=weights)
    np.testing.assert_array_equal(same.get_layer("predictions").kernel.numpy(), loaded["predictions/kernel"])

    images = np.random.RandomState(0).randint(0, 256, (16, 64, 64, 3)).astype(np.uint8)
    source = training.array_source(images, np.arange(16) % 4, 4)
    strategy = tf.distribute.get_strategy()
    train_data = training.train_dataset(strategy, source, 64, 8, seed=0)
    optimizer = training.make_optimizer(model, 1e-3)
    training.compile_model(model, optimizer)
    initial_head = head.kernel.numpy()
    # Python in train_step runs only while tf.function traces it.
    traces = []
    train_step = model.train_step
    model.train_step = lambda data: traces.append(data) or train_step(data)
    history, _ = training.fit(
        model, train_data, epochs=1, steps_per_epoch=1, output_dir=str(tmp_path / "run"), verbose=0
    )
    # Once: an optimizer left to create its variables during the first trace makes tf.function
    # trace the train step twice, doubling the first epoch's cost on CPU.
    assert len(traces) == 1
    assert np.isfinite(history["loss"][0]) and int(model.optimizer.iterations.numpy()) == 1
    assert not np.array_equal(head.kernel.numpy(), initial_head)
    # The fine-tuned weights load back into the plain builder with the new class count.
    saved = tmp_path / "run" / "checkpoints" / "last.weights.h5"
    rebuilt = keras_cvt.CvT(
        **TINY, input_shape=(64, 64, 3), classes=4, classifier_activation=None, weights=saved
    )
    x = images[:2].astype("float32")
    np.testing.assert_allclose(rebuilt.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)

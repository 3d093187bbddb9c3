"""Train or fine-tune CvT on a TFDS dataset or an image folder, on one or many devices.

    python examples/train.py --dataset tf_flowers --weights imagenet --epochs 30 --output-dir runs/fl
    python examples/train.py --image-folder photos/ --model cvt21 --mixed-precision bfloat16 --output-dir runs/p

Defaults are the original CvT recipe (AdamW, 2.5e-4 per 256 images, the paper's weight decay of
the variant except on norms, biases and the class token, 5 warm-up epochs then cosine to 1e-5
over 300 epochs, label smoothing 0.1, stochastic depth of the variant, random resized
crops and flips); see `keras_cvt.training`.

Run the same command again after a kill or a crash and it resumes from its last intact backup,
at the same epoch and step, and ends after as many optimizer steps as an uninterrupted run;
with other arguments (batch size, epochs, model, ...) it refuses and says what changed. SIGTERM
or SIGINT (a pre-emption, Ctrl-C) finishes the step, writes a backup there and exits with
status 143 or 130 (run the same command again to resume); a full disk exits with status 1 and
one line naming the file, the previous files kept. A second process into the same
--output-dir stops at once, naming the process that holds it. Run again after it completed,
it leaves the checkpoints as they are and says so; `--restart` trains again (and
`checkpoints/best.weights.h5` is only replaced by a better model). Image folders are decoded
once before training: unreadable files are listed in one error (`--skip-bad-images` skips them
with a warning). The last line printed is the validation top-1 / top-5 accuracy.
"""

import argparse
import dataclasses
import sys

import keras

from keras_cvt import pretrained, training
from keras_cvt.atomic import WriteError
from keras_cvt.locks import LockedError
from keras_cvt.training import cli


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data = cli.add_data_arguments(parser)
    data.add_argument(
        "--train-split",
        help="TFDS split to train on (default: 'train', or 'train[:90%%]' "
        "when the dataset has no 'validation' split)",
    )
    data.add_argument(
        "--val-split", help="TFDS split to validate on (default: 'validation', or 'train[90%%:]')"
    )
    data.add_argument(
        "--val-folder",
        help="image folder to validate on (default: hold out --val-fraction of --image-folder)",
    )
    data.add_argument("--val-fraction", type=float, default=0.1)
    data.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="train without the image folder's files that cannot be decoded (listed in a warning) "
        "instead of stopping with their list",
    )

    model = cli.add_architecture_arguments(parser)
    model.add_argument(
        "--weights",
        help="initial weights to fine-tune: a .weights.h5 path or a pretrained "
        "name of --model (e.g. imagenet); a classifier for another number of classes is "
        "replaced by a new one",
    )
    model.add_argument(
        "--image-size",
        type=int,
        help="training resolution (default: the pretrained weights' resolution, else "
        f"{pretrained.DEFAULT_TRANSFORM.size})",
    )
    model.add_argument("--drop-path-rate", type=float, help="stochastic depth (default: the variant's)")

    recipe = parser.add_argument_group("recipe")
    recipe.add_argument("--epochs", type=int, default=training.EPOCHS)
    recipe.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="per replica; the global batch is this times the number of replicas",
    )
    recipe.add_argument(
        "--learning-rate",
        type=float,
        help="peak learning rate (default: --base-learning-rate * global batch / 256)",
    )
    recipe.add_argument("--base-learning-rate", type=float, default=training.BASE_LEARNING_RATE)
    recipe.add_argument(
        "--weight-decay",
        type=float,
        help="default: the paper's, "
        + ", ".join(f"{name} {decay}" for name, decay in training.VARIANT_WEIGHT_DECAY.items())
        + f", and {training.WEIGHT_DECAY} for custom architectures",
    )
    recipe.add_argument("--warmup-epochs", type=int, default=training.WARMUP_EPOCHS)
    recipe.add_argument("--warmup-learning-rate", type=float, default=training.WARMUP_LEARNING_RATE)
    recipe.add_argument("--min-learning-rate", type=float, default=training.MIN_LEARNING_RATE)
    recipe.add_argument("--label-smoothing", type=float, default=training.LABEL_SMOOTHING)
    recipe.add_argument(
        "--crop-scale", type=float, nargs=2, default=training.CROP_SCALE, metavar=("MIN", "MAX")
    )
    recipe.add_argument("--no-crop", action="store_true", help="resize whole images instead of random crops")
    recipe.add_argument("--no-flip", action="store_true")
    recipe.add_argument("--randaugment", type=float, default=0.0, help="RandAugment factor (0: off)")
    recipe.add_argument(
        "--mixup", type=float, default=0.0, help=f"MixUp alpha (0: off; original {training.MIXUP_ALPHA})"
    )
    recipe.add_argument(
        "--cutmix", type=float, default=0.0, help=f"CutMix alpha (0: off; original {training.CUTMIX_ALPHA})"
    )
    recipe.add_argument("--steps-per-epoch", type=int, help="default: training images // global batch")
    recipe.add_argument("--seed", type=int)

    run = parser.add_argument_group("run")
    run.add_argument(
        "--strategy",
        choices=training.STRATEGIES,
        default="auto",
        help="auto: mirrored when GPUs are present; multiworker reads TF_CONFIG",
    )
    run.add_argument("--tpu", help="TPU name or address for --strategy tpu")
    run.add_argument("--mixed-precision", choices=("bfloat16", "float16"))
    run.add_argument("--jit-compile", action="store_true")
    run.add_argument("--steps-per-execution", type=int, default=1)
    run.add_argument("--output-dir", required=True, help="backup/, checkpoints/ and logs/ go here")
    run.add_argument(
        "--backup-every", type=int, default=500, help="steps between backups (0: each epoch only)"
    )
    run.add_argument("--keep-backup", action="store_true", help="keep the backup after training completes")
    run.add_argument(
        "--restart",
        action="store_true",
        help="discard --output-dir's backup and completion record and train from step 0 "
        "(checkpoints/best.weights.h5 is replaced only by a better model)",
    )
    run.add_argument("--verbose", type=int, default=2)
    args = parser.parse_args(argv)
    args.architecture = cli.architecture(parser, args)
    return args


def sources(args, multi_worker):
    if args.dataset:
        default_train, default_val = training.default_tfds_splits(args.dataset, args.data_dir)
        kwargs = {
            "data_dir": args.data_dir,
            "image_key": args.image_key,
            "label_key": args.label_key,
            "download": not (args.no_download or multi_worker),
        }
        train = training.tfds_source(args.dataset, args.train_split or default_train, **kwargs)
        val = training.tfds_source(args.dataset, args.val_split or default_val, **kwargs)
    elif args.val_folder:
        train = training.image_folder_source(args.image_folder, skip_bad_images=args.skip_bad_images)
        val = training.image_folder_source(args.val_folder, skip_bad_images=args.skip_bad_images)
    else:
        train, val = training.image_folder_source(
            args.image_folder, "both", args.val_fraction, skip_bad_images=args.skip_bad_images
        )
    if train.num_classes != val.num_classes:
        raise SystemExit(f"training data has {train.num_classes} classes, validation data {val.num_classes}")
    return train, val


class StartLogger(keras.callbacks.Callback):
    """Prints the optimizer step that training starts at: 0, or where a backup left off."""

    def __init__(self):
        super().__init__()
        self.printed = False

    def on_train_begin(self, logs=None):
        if not self.printed:
            print(f"Starting at optimizer step {int(self.model.optimizer.iterations.numpy())}", flush=True)
            self.printed = True


def run(args, callbacks=()):
    """Trains as `args` say (with `callbacks` too); returns `(model, history, (top1, top5))`."""
    # First: MultiWorkerMirroredStrategy must configure collectives before any TF op runs.
    strategy = training.make_strategy(args.strategy, args.tpu)
    # Then the run directory's lock: a second process into it stops before reading any data.
    with training.run_directory_lock(args.output_dir, strategy):
        return _run(args, strategy, callbacks)


def _run(args, strategy, callbacks):
    multi_worker = training.is_multi_worker(strategy)
    if args.seed is not None:
        keras.utils.set_random_seed(args.seed)
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy(f"mixed_{args.mixed_precision}")

    train_source, val_source = sources(args, multi_worker)
    # Validation sees the initial weights' evaluation transform (at --image-size if given).
    transform = cli.evaluation_transform_record(args)
    size = transform.size
    replicas = strategy.num_replicas_in_sync
    global_batch = args.batch_size * replicas
    steps_per_epoch = args.steps_per_epoch or train_source.num_examples // global_batch
    if steps_per_epoch < 1:
        raise SystemExit(
            f"{train_source.num_examples} training images do not fill one global batch of {global_batch}"
        )
    peak_lr = args.learning_rate or training.scaled_learning_rate(global_batch, args.base_learning_rate)
    augmentation = training.Augmentation(
        crop_scale=None if args.no_crop else tuple(args.crop_scale),
        flip=not args.no_flip,
        randaugment=args.randaugment,
        mixup=args.mixup,
        cutmix=args.cutmix,
    )
    train_data = training.train_dataset(
        strategy, train_source, size, args.batch_size, augmentation, seed=args.seed
    )
    val_data = training.eval_dataset(strategy, val_source, size, args.batch_size, transform.crop_ratio, transform.interpolation)
    print(
        f"{replicas} replica(s), global batch {global_batch}, {steps_per_epoch} steps per epoch, "
        f"peak learning rate {peak_lr:.3g}, {train_source.num_classes} classes, {size}px",
        flush=True,
    )

    with strategy.scope():
        model = training.build_model(
            args.architecture,
            train_source.num_classes,
            size,
            weights=args.weights,
            drop_path_rate=args.drop_path_rate,
        )
        schedule = training.recipe_schedule(
            peak_lr,
            args.epochs,
            steps_per_epoch,
            args.warmup_epochs,
            args.warmup_learning_rate,
            args.min_learning_rate,
        )
        weight_decay = args.weight_decay
        if weight_decay is None:
            weight_decay = training.weight_decay_for(args.architecture)
        optimizer = training.make_optimizer(model, schedule, weight_decay)
        training.compile_model(
            model, optimizer, args.label_smoothing, args.jit_compile, args.steps_per_execution
        )
    training.prepare_for_strategy(model, strategy, size, train_source.num_classes)

    # What defines the run besides epochs and steps per epoch: a rerun with other values is refused.
    parameters = {
        "architecture": args.architecture,
        "classes": train_source.class_names,
        "training_images": train_source.num_examples,
        "image_size": size,
        "batch_size": args.batch_size,
        "global_batch": global_batch,
        "learning_rate": peak_lr,
        "warmup_epochs": args.warmup_epochs,
        "warmup_learning_rate": args.warmup_learning_rate,
        "min_learning_rate": args.min_learning_rate,
        "weight_decay": weight_decay,
        "label_smoothing": args.label_smoothing,
        "drop_path_rate": args.drop_path_rate,
        "augmentation": dataclasses.asdict(augmentation),
        "mixed_precision": args.mixed_precision,
    }
    history, (epoch, step) = training.fit(
        model,
        train_data,
        epochs=args.epochs,
        steps_per_epoch=steps_per_epoch,
        output_dir=args.output_dir,
        strategy=strategy,
        validation_data=val_data,
        backup_every=args.backup_every,
        keep_backup=args.keep_backup,
        restart=args.restart,
        parameters=parameters,
        callbacks=[StartLogger(), *callbacks],
        verbose=args.verbose,
    )
    if history and (epoch or step):  # no history: a completed run, not trained again (fit warns)
        print(f"Resumed at epoch {epoch} step {step}", flush=True)
    print(f"Optimizer steps: {int(model.optimizer.iterations.numpy())}", flush=True)
    top1, top5 = training.evaluate(model, val_data)
    print(f"Validation top-1 {top1:.4f} top-5 {top5:.4f} ({val_source.num_examples} images)", flush=True)
    return model, history, (top1, top5)


def main(argv=None, callbacks=()):
    """Exit status: 0 done; 2 refused (data, arguments, the output directory, or another process
    training there); 1 a file could not be written (full disk: the previous files are kept);
    143 (SIGTERM) or 130 (SIGINT) pre-empted, with a backup at the step it stopped: run the same
    command again to resume."""
    args = parse_args(argv)
    try:
        run(args, callbacks)
    # ImportError: --dataset without tensorflow-datasets, whose message names the extra.
    except (ValueError, ImportError, LockedError) as error:
        # The checks of data, arguments and the output directory say what to do; a traceback
        # would bury that.
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    except WriteError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 1
    except training.Preempted as preempted:
        print(f"train.py: {preempted}", file=sys.stderr, flush=True)
        return preempted.exit_status
    return 0


if __name__ == "__main__":
    sys.exit(main())

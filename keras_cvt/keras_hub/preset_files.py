"""The files of a keras-hub preset directory of keras_cvt's classes: bounded before keras-hub
reads them, and verified against the record that `save_to_preset` writes beside them.

The record (`RECORD_FILE`) holds the size and SHA-256 of every file of the preset, written
after them, so a truncated, flipped or replaced file is refused by name before its weights are
used. Presets without one (written by others, or before keras_cvt wrote records) load as
keras-hub loads them.
"""

import json
import os

from keras_hub.src.utils.preset_utils import CONFIG_FILE, TASK_CONFIG_FILE, TASK_WEIGHTS_FILE

from keras_cvt import _version, atomic, declared

RECORD_FILE = "keras_cvt_record.json"
RECORD_FORMAT = 1


def write_record(preset_dir):
    """Records the size and SHA-256 of every file in `preset_dir` (published atomically)."""
    files = {}
    for name in sorted(os.listdir(preset_dir)):
        path = os.path.join(preset_dir, name)
        if name != RECORD_FILE and not name.startswith(".") and os.path.isfile(path):
            files[name] = {"size": os.path.getsize(path), "sha256": atomic.sha256_file(path)}
    record = {"format": RECORD_FORMAT, "keras_cvt": _version.__version__, "files": files}
    atomic.write_bytes(os.path.join(preset_dir, RECORD_FILE), (json.dumps(record, indent=2) + "\n").encode())


def verify(preset_dir, only=None, skip=()):
    """Refuses a file of `preset_dir` that differs from the preset's record, naming it; does
    nothing for a preset without a record.

    Args:
        only: the file names to verify (all recorded files by default).
        skip: file names not to verify (verified elsewhere).
    """
    record_path = os.path.join(preset_dir, RECORD_FILE)
    if not os.path.isfile(record_path):
        return
    record = declared.read_json(record_path, record_path)
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, dict) or record.get("format") != RECORD_FORMAT:
        raise ValueError(f"{record_path}: not a keras_cvt preset record of format {RECORD_FORMAT}")
    for name, entry in files.items():
        if (only is not None and name not in only) or name in skip:
            continue
        if os.path.basename(name) != name or name in ("", ".", "..") or not isinstance(entry, dict):
            raise ValueError(f"{record_path}: the entry {name[:100]!r} is not a file of the preset")
        path = os.path.join(preset_dir, name)
        if not os.path.isfile(path):
            raise ValueError(f"preset file {path} is missing; the preset's record {record_path} lists it")
        size = os.path.getsize(path)
        if size != entry.get("size"):
            raise ValueError(
                f"preset file {path} has {size:,} bytes, its record {record_path} says "
                f"{entry.get('size')!r}: it is truncated or damaged; save the preset again"
            )
        actual = atomic.sha256_file(path)
        if actual != entry.get("sha256"):
            raise ValueError(
                f"preset file {path} has SHA-256 {actual}, its record {record_path} says "
                f"{entry.get('sha256')!r}: it changed after it was saved; save the preset again"
            )


def check_directory(preset, task=False, task_class=None):
    """Before keras-hub reads a local preset directory: its files verified against the record,
    its `config.json` (and with `task`, its `task.json`) bounded in size and nesting, and a
    `task.json` of another class than `task_class` refused by name (keras-hub would build a
    `task_class` without its arguments)."""
    if not (isinstance(preset, (str, os.PathLike)) and os.path.isdir(preset)):
        return
    preset = os.fspath(preset)
    verify(preset)
    for name in (CONFIG_FILE, TASK_CONFIG_FILE) if task else (CONFIG_FILE,):
        path = os.path.join(preset, name)
        if not os.path.isfile(path):
            continue
        config = declared.read_json(path, path)
        if name != TASK_CONFIG_FILE or task_class is None:
            continue
        registered = config.get("registered_name") if isinstance(config, dict) else None
        expected = f"keras_cvt>{task_class.__name__}"
        if registered != expected:
            raise ValueError(
                f"{path}: registered_name is {registered!r}, expected {expected!r}: the preset's "
                f"task is another class than {task_class.__name__}; load it with that class, or "
                f"pass num_classes=... to put a new {task_class.__name__} on its backbone"
            )


def verify_weights(path):
    """Verifies a weights file that keras-hub loads from a preset against its record: the
    task's file alone, or for the backbone's every recorded file but the task's (verified
    when the task loads it, if it is there)."""
    path = os.fspath(path)
    directory, name = os.path.split(path)
    directory = directory or "."
    if name == TASK_WEIGHTS_FILE:
        verify(directory, only={name})
    else:
        # A missing task file is refused here: keras-hub would leave the classifier random.
        present = os.path.isfile(os.path.join(directory, TASK_WEIGHTS_FILE))
        verify(directory, skip={TASK_WEIGHTS_FILE} if present else ())

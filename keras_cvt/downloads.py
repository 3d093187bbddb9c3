"""Files of HuggingFace hub repos, fetched by huggingface_hub's public API into its own cache.

`huggingface_hub.get_hf_file_metadata` asks the hub what a revision is (its commit, the file's
hash); `huggingface_hub.hf_hub_download` fetches the file at that commit, with its
cache (`HF_HOME`, `HF_HUB_CACHE`), its locks, `HF_TOKEN`, Xet transfers and resumption.
`HF_ENDPOINT` and `HF_HUB_OFFLINE` are read here at each call (huggingface_hub reads them once,
at import). What it does not do, done here through its extension points:

- each file is verified by SHA-256: against the checksum pinned in `keras_cvt.pretrained` when
  there is one, else against the Git LFS id the hub reported for it (a file kept in Git itself,
  such as config.json, against its Git blob id); a file that fails is removed from the cache;
- faults huggingface_hub does not retry (an HTTP 5xx on the body, a body cut short without a
  Content-Length) are retried `ATTEMPTS` times, waiting `BACKOFF_S`, then twice as long...;
- an overall deadline per file (`KERAS_CVT_DOWNLOAD_DEADLINE_S`, default `DEADLINE_S`), checked
  by the progress bar (`tqdm_class`) at each chunk huggingface_hub reads
  (`huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE`): a server that trickles bytes never trips
  `HF_HUB_DOWNLOAD_TIMEOUT`, which bounds one read only;
- progress that names the file, and off a terminal (logs, CI) a line per tenth and one at 100%.
"""

import contextlib
import dataclasses
import errno
import hashlib
import os
import re
import sys
import time

import huggingface_hub
from huggingface_hub import constants as hf_constants
from huggingface_hub import errors as hf_errors
from huggingface_hub.utils import tqdm as hf_tqdm

from keras_cvt import _version, architectures, atomic
from keras_cvt.errors import describe_error

DEFAULT_ENDPOINT = "https://huggingface.co"
# Attempts per file, and the first wait between them (doubled after each failure).
ATTEMPTS = 4
BACKOFF_S = 1.0
# The longest one file's transfer may take (1.1 GB at 0.3 MB/s); KERAS_CVT_DOWNLOAD_DEADLINE_S
# overrides it.
DEADLINE_S = 3600.0
COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# A server that fails now may not in a second; anything else (404, 401, 403) will not improve.
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
# What writing into a read-only or foreign cache raises.
_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


class HubError(OSError):
    """A file could not be fetched (or was refused) from the hub."""


class ChecksumError(HubError):
    """The downloaded bytes are not the expected file."""


class OfflineError(HubError):
    """`HF_HUB_OFFLINE` forbids the download that a pretrained name needs."""


class DeadlineError(HubError):
    """The transfer of one file took longer than its deadline."""


class NotFoundError(HubError):
    """The repository, revision or file does not exist on the hub (or is not visible)."""


@dataclasses.dataclass(frozen=True)
class Remote:
    """What the hub says of a file at a revision: the commit it serves, and the file's hash
    (the LFS SHA-256, or a Git blob id for a file kept in Git)."""

    commit: str
    etag: str


def endpoint():
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def offline():
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def deadline_s():
    value = os.environ.get("KERAS_CVT_DOWNLOAD_DEADLINE_S")
    if not value:
        return DEADLINE_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise ValueError(f"KERAS_CVT_DOWNLOAD_DEADLINE_S must be a positive number of seconds, got {value!r}")
    return seconds


def url_for(entry, revision=None):
    """The hub URL of an entry's file (`keras_cvt.pretrained.Pretrained` or a `hf://` source)."""
    return huggingface_hub.hf_hub_url(
        entry.repo, entry.filename, revision=revision or entry.revision, endpoint=endpoint()
    )


def describe(entry):
    return f"{entry.filename} of {entry.repo} at revision {entry.revision} ({url_for(entry)})"


def manual_instructions(entry):
    """How to do by hand what the download does, for machines that cannot reach the hub."""
    if entry.filename == "config.json":
        # Not weights: nothing to convert; keras_cvt reads it from huggingface_hub's cache.
        return (
            f"To fetch it by hand, run `hf download {entry.repo} config.json --revision "
            f"{entry.revision}` where the hub is reachable and copy that huggingface_hub cache "
            f"(HF_HOME) to {hub_cache_dir()}: keras_cvt reads the architecture and labels from it."
        )
    output = f"{entry.variant}_{entry.name}.weights.h5"
    check = f"; its SHA-256 must be {entry.sha256}" if entry.sha256 else ""
    # A file path does not carry the checkpoint's resolution, which a name makes the default.
    shape = f", input_shape=({entry.resolution}, {entry.resolution}, 3)" if entry.resolution != architectures.DEFAULT_SIZE else ""
    if entry.variant in architectures.VARIANTS:
        use = f'pass the file: `{architectures.VARIANTS[entry.variant].builder}(weights="{output}"{shape})`'
    else:
        use = (
            f'pass the file to `keras_cvt.CvT(..., weights="{output}")` with the architecture of config.json'
        )
    return (
        f"To install these weights by hand, download {url_for(entry)} (e.g. `curl -L -o "
        f"{entry.filename} {url_for(entry)}`){check}, convert it with `python -m keras_cvt.conversion "
        f"{entry.filename} {output}`, then {use}."
    )


def hub_cache_dir():
    """huggingface_hub's cache (`HF_HUB_CACHE`, by default `~/.cache/huggingface/hub`)."""
    return hf_constants.HF_HUB_CACHE


def remote(entry, revision=None):
    """What the hub says of `entry`'s file at `revision` (`entry.revision` by default): one
    HEAD request, retried by huggingface_hub on network errors and 5xx.

    Raises:
        OfflineError: `HF_HUB_OFFLINE` is set.
        NotFoundError: the repository, revision or file does not exist (or is not visible).
        ChecksumError: the answer lacks the commit or the file's hash.
        HubError: the hub cannot be reached, or refused.
    """
    if offline():
        raise OfflineError(
            f"HF_HUB_OFFLINE is set, so the hub cannot be asked for {describe(entry)}. "
            + manual_instructions(entry)
        )
    try:
        metadata = huggingface_hub.get_hf_file_metadata(
            url_for(entry, revision),
            library_name="keras-cvt",
            library_version=_version.__version__,
            endpoint=endpoint(),
            retry_on_errors=True,
        )
    except hf_errors.HfHubHTTPError as error:
        raise _refused(entry, error) from error
    except Exception as error:
        # Connection refused, DNS, TLS, timeouts: the HTTP client's own errors, after
        # huggingface_hub's retries.
        raise HubError(
            f"{describe(entry)}: the hub could not be reached ({type(error).__name__}: "
            f"{describe_error(error)}); check the network, HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to "
            "use only what is cached. " + manual_instructions(entry)
        ) from error
    if not (metadata.commit_hash and COMMIT.fullmatch(metadata.commit_hash) and metadata.etag):
        raise ChecksumError(
            f"{describe(entry)}: the server's answer lacks the X-Linked-Etag or ETag and "
            f"X-Repo-Commit headers to verify the file against (got commit "
            f"{metadata.commit_hash!r}, etag {metadata.etag!r}); check HF_ENDPOINT. "
            + manual_instructions(entry)
        )
    return Remote(metadata.commit_hash, metadata.etag)


def download(entry, at=None, progress=True):
    """`entry`'s file in huggingface_hub's cache, fetched at one commit and verified.

    Args:
        entry: a `keras_cvt.pretrained.Pretrained` record or a `keras_cvt.hf.HubFile`.
        at: the `Remote` that `remote(entry)` answered, or a commit, or None: `entry.revision`
            if it is a commit, else what the hub says the revision is now.
        progress: show huggingface_hub's progress bar (a few lines off a terminal).

    Returns:
        (path, SHA-256 of the file, commit).

    Raises:
        OfflineError: `HF_HUB_OFFLINE` is set and the file is not in huggingface_hub's cache.
        ChecksumError: nothing to verify against, or the bytes do not match it.
        DeadlineError: the transfer took longer than `deadline_s()`.
        NotFoundError, HubError: the hub refused the file, or the transfer kept failing.
    """
    commit = at.commit if isinstance(at, Remote) else at or (entry.revision if COMMIT.fullmatch(entry.revision) else None)
    if offline():
        return _cached(entry, commit)
    if not isinstance(at, Remote) and (entry.sha256 is None or commit is None):
        at = remote(entry, commit)
        commit = at.commit
    expected = entry.sha256 or at.etag
    wait = BACKOFF_S
    for attempt in range(1, ATTEMPTS + 1):
        try:
            path = _fetch(entry, commit, progress)
            break
        except _Transient as error:
            problem = error.__cause__
        if attempt == ATTEMPTS:
            raise HubError(
                f"downloading {describe(entry)} failed {ATTEMPTS} times; last: {describe_error(problem)}. "
                + manual_instructions(entry)
            ) from problem
        print(f"{entry.repo}/{entry.filename}: {describe_error(problem)}; retrying in {wait:g} s", file=sys.stderr)
        time.sleep(wait)
        wait *= 2
    return path, _verify(entry, path, expected), commit


def _cached(entry, commit):
    """Offline: the file as huggingface_hub's cache holds it at `commit` (else at the commit
    its cache records for `entry.revision`), verified against the pin when there is one
    (without one, it was verified when it was downloaded)."""
    try:
        info = huggingface_hub.hf_hub_download(
            entry.repo, entry.filename, revision=commit or entry.revision, local_files_only=True, dry_run=True
        )
    except hf_errors.LocalEntryNotFoundError as error:
        raise OfflineError(
            f"HF_HUB_OFFLINE is set and huggingface_hub's cache ({hub_cache_dir()}) does not "
            f"hold {describe(entry)}, so it would have to be downloaded. " + manual_instructions(entry)
        ) from error
    path = info.local_path
    sha256 = _verify(entry, path, entry.sha256) if entry.sha256 else atomic.sha256_file(path)
    return path, sha256, info.commit_hash


def _verify(entry, path, expected):
    """The SHA-256 of the downloaded file, which must be `expected`: the pin, the hub's LFS
    SHA-256, or (a file kept in Git) its Git blob id."""
    if expected is not None and COMMIT.fullmatch(expected) and not entry.sha256:
        if _git_blob_id(path) != expected:
            _remove(path)
            raise ChecksumError(
                f"{describe(entry)}: the downloaded file is not Git blob {expected}, the id the hub "
                "reported; it was removed from huggingface_hub's cache."
            )
        return atomic.sha256_file(path)
    if expected is None or not _SHA256.fullmatch(expected):
        raise ChecksumError(
            f"{describe(entry)}: nothing to verify the download against: keras_cvt.pretrained pins "
            "no SHA-256 for it and the hub reported none (an X-Linked-Etag or ETag header of 64 "
            f"hex digits from the resolve URL; got {expected!r}), so it is not used. "
            + manual_instructions(entry)
        )
    actual = atomic.sha256_file(path)
    size = os.path.getsize(path)
    if actual != expected:
        _remove(path)
        source = "pinned in keras_cvt.pretrained" if entry.sha256 else "reported by the hub"
        raise ChecksumError(
            f"{describe(entry)}: the downloaded file ({size} bytes) has SHA-256 {actual}, expected {expected} ({source}); it was removed from "
            f"huggingface_hub's cache. A proxy or mirror (HF_ENDPOINT) may serve a different file. "
            + manual_instructions(entry)
        )
    return actual


def _remove(path):
    # The path huggingface_hub returned and the file it resolves to: kept, huggingface_hub
    # would serve the wrong bytes again on every later call.
    for name in {os.path.realpath(path), path}:
        with contextlib.suppress(FileNotFoundError):
            os.remove(name)


def _git_blob_id(path):
    digest = hashlib.sha1(f"blob {os.path.getsize(path)}\0".encode())
    with open(path, "rb") as f:
        digest.update(f.read())
    return digest.hexdigest()


class _Transient(Exception):
    """One attempt failed in a way that another attempt may not; `__cause__` says how."""


class _DeadlinePassed(Exception):
    """Raised inside the transfer by the progress bar; not an HTTP error, so huggingface_hub
    neither retries it nor keeps the partial file."""


class _Progress(hf_tqdm):
    """huggingface_hub's bar, named by the file, and the deadline's clock.

    On a terminal, the bar as huggingface_hub draws it; off one (logs, CI), where its bar is
    disabled, a line per tenth of the file and one when done, instead of nothing.
    `HF_HUB_DISABLE_PROGRESS_BARS` still silences both. Subclassed per download
    (`_progress_class`) with `filename`, `deadline` (a `time.monotonic()` time) and `shown`."""

    filename = None
    deadline = None
    shown = True

    def __init__(self, *args, **kwargs):
        if not self.shown:
            kwargs["disable"] = True
        self._lines = kwargs.get("disable") is None and not _is_terminal(kwargs.get("file") or sys.stderr)
        if self._lines:
            kwargs["disable"] = False
        kwargs["desc"] = self.filename
        self._tenth = -1
        super().__init__(*args, **kwargs)

    def update(self, n=1):
        if time.monotonic() > self.deadline:
            raise _DeadlinePassed()
        return super().update(n)

    def display(self, msg=None, pos=None):
        if not self._lines:
            return super().display(msg, pos)
        tenth = int(10 * self.n / self.total) if self.total else 0
        if tenth > self._tenth:
            self._tenth = tenth
            self.fp.write(str(self).strip() + "\n")
            self.fp.flush()
        return True


def _progress_class(filename, progress):
    return type("_Progress", (_Progress,), {"filename": filename, "deadline": time.monotonic() + deadline_s(), "shown": progress})


def _is_terminal(stream):
    return hasattr(stream, "isatty") and stream.isatty()


def _fetch(entry, commit, progress):
    """`hf_hub_download` of `entry`'s file at `commit`, its failures told apart: transient ones
    raised as `_Transient`, refusals as `NotFoundError`/`HubError`."""
    seconds = deadline_s()
    try:
        return huggingface_hub.hf_hub_download(
            entry.repo,
            entry.filename,
            revision=commit,
            endpoint=endpoint(),
            library_name="keras-cvt",
            library_version=_version.__version__,
            tqdm_class=_progress_class(entry.filename, progress),
        )
    except _DeadlinePassed as error:
        raise DeadlineError(
            f"downloading {describe(entry)} took longer than {seconds:g} s (a slow server or "
            "link; KERAS_CVT_DOWNLOAD_DEADLINE_S sets the limit); the partial file was removed. "
            + manual_instructions(entry)
        ) from error
    except hf_errors.LocalEntryNotFoundError as error:
        # The HEAD of huggingface_hub's own failed after its retries: the hub went away.
        raise _Transient() from error
    except hf_errors.HfHubHTTPError as error:
        if _status(error) in _TRANSIENT_STATUS:
            raise _Transient() from error
        raise _refused(entry, error) from error
    except OSError as error:
        if error.errno in _UNWRITABLE:
            # No attempt will do better: the cache, not the network, is the problem.
            where = error.filename or hub_cache_dir()
            raise HubError(
                f"downloading {describe(entry)}: huggingface_hub's cache cannot be written at "
                f"{where} ({describe_error(error)}); make it writable, or set HF_HOME (or "
                "HF_HUB_CACHE) to a writable directory"
            ) from error
        # huggingface_hub raises a bare OSError for a body shorter than the size the hub reported
        # ("Consistency check failed"), which a second attempt usually mends.
        raise _Transient() from error


def _status(error):
    return error.response.status_code if error.response is not None else None


def _refused(entry, error):
    """The HubError for an HTTP error answer of the hub."""
    if isinstance(error, hf_errors.GatedRepoError):
        return HubError(
            f"{describe(entry)}: the repository is gated: accept its conditions on the hub and set "
            f"HF_TOKEN to a token of that account ({describe_error(error)}). " + manual_instructions(entry)
        )
    if isinstance(
        error,
        (hf_errors.RepositoryNotFoundError, hf_errors.RevisionNotFoundError, hf_errors.RemoteEntryNotFoundError),
    ):
        return NotFoundError(
            f"{describe(entry)}: the repository, revision or file does not exist there, or is "
            f"private (set HF_TOKEN to a token that may read it); check HF_ENDPOINT too: "
            f"{describe_error(error)}. " + manual_instructions(entry)
        )
    status = _status(error)
    hint = "set HF_TOKEN to a token that may read it" if status in (401, 403) else "the hub refused it"
    return HubError(f"{describe(entry)}: HTTP {status}: {hint}. " + manual_instructions(entry))

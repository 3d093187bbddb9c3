"""Files of HuggingFace hub repos, downloaded by `huggingface_hub` into its own cache.

`huggingface_hub.hf_hub_download` does the transfer: its cache (`HF_HOME`, `HF_HUB_CACHE`),
`HF_TOKEN` (private and gated repos), Xet transfers, resumption and progress bars. `HF_ENDPOINT`
and `HF_HUB_OFFLINE` are read here at each call (huggingface_hub reads them once, at import).
What it does not do, done here:

- a download is verified by SHA-256: against the checksum pinned in `keras_cvt.pretrained`
  when there is one, else against the Git LFS id the hub reported (the name of the blob in
  huggingface_hub's cache); a file that fails is removed from that cache;
- a revision that is a branch (`main`) is resolved to the commit the hub serves it at, so what
  the pretrained cache keeps is keyed by a commit, never by a branch;
- faults huggingface_hub does not retry (an HTTP 5xx on the body, a body cut short without a
  Content-Length) are retried `ATTEMPTS` times;
- an overall deadline per file (`KERAS_CVT_DOWNLOAD_DEADLINE_S`, default `DEADLINE_S`): a
  server that trickles bytes never trips `HF_HUB_DOWNLOAD_TIMEOUT`, which bounds one read only;
- the partial download a killed process left in huggingface_hub's cache (it names them
  `<etag>.<random>.incomplete` and never removes them) is removed by the next download of the
  repo, once the file lock huggingface_hub holds while writing it shows nobody is.
"""

import contextlib
import glob
import hashlib
import os
import re
import sys
import threading
import time

import filelock
import httpx2
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
_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_GIT_SHA1 = _COMMIT
# A server that fails now may not in a second; anything else (404, 401, 403) will not improve.
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}


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
    return f"{endpoint()}/{entry.repo}/resolve/{revision or entry.revision}/{entry.filename}"


def describe(entry):
    return f"{entry.filename} of {entry.repo} at revision {entry.revision} ({url_for(entry)})"


def manual_instructions(entry):
    """How to do by hand what the download does, for machines that cannot reach the hub."""
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
        f"{entry.filename} {url_for(entry)}`){check}, convert it with `python -m weights_conversion "
        f"{entry.filename} {output}`, then {use}."
    )


def hub_cache_dir():
    """huggingface_hub's cache (`HF_HUB_CACHE`, by default `~/.cache/huggingface/hub`)."""
    return hf_constants.HF_HUB_CACHE


def resolve_commit(entry):
    """The commit that `entry.revision` names now: itself if it is one, else what the hub
    answers, or offline what huggingface_hub's cache last recorded (None if it has nothing).

    Raises:
        NotFoundError: the hub says the repository, revision or file does not exist.
        HubError: the hub cannot be reached (after huggingface_hub's retries) or refused.
    """
    if _COMMIT.fullmatch(entry.revision):
        return entry.revision
    try:
        return _call(entry, dry_run=True).commit_hash
    except hf_errors.LocalEntryNotFoundError as error:
        if offline():
            return None
        raise _unreachable(entry, error) from error


def download(entry, progress=True):
    """The path, in huggingface_hub's cache, of `entry`'s file, verified.

    Returns:
        (path, SHA-256 of the file).

    Raises:
        OfflineError: `HF_HUB_OFFLINE` is set and the file is not in huggingface_hub's cache.
        ChecksumError: nothing to verify against, or the bytes do not match it.
        DeadlineError: the transfer took longer than `deadline_s()`.
        NotFoundError, HubError: the hub refused the file, or the transfer kept failing.
    """
    wait = BACKOFF_S
    for attempt in range(1, ATTEMPTS + 1):
        remove_abandoned_partials(entry.repo)
        try:
            path = _call(entry, progress=progress)
            break
        except hf_errors.LocalEntryNotFoundError as error:
            if offline():
                raise OfflineError(
                    f"HF_HUB_OFFLINE is set and huggingface_hub's cache ({hub_cache_dir()}) does not "
                    f"hold {describe(entry)}, so it would have to be downloaded. "
                    + manual_instructions(entry)
                ) from error
            raise _unreachable(entry, error) from error
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
    return path, _verify(entry, path)


def _unreachable(entry, error):
    """The HubError for a hub whose answer to the first request (HEAD) huggingface_hub could
    not use, after its own retries."""
    cause = error.__cause__ or error
    if isinstance(cause, hf_errors.FileMetadataError):
        # The server answered, without what huggingface_hub needs (an ETag, X-Repo-Commit).
        return ChecksumError(
            f"{describe(entry)}: the server's answer lacks the X-Linked-Etag or ETag and "
            f"X-Repo-Commit headers to verify the file against ({describe_error(cause)}); check "
            "HF_ENDPOINT. " + manual_instructions(entry)
        )
    return HubError(
        f"{describe(entry)}: the hub could not be reached or failed ({describe_error(cause)}); check the "
        "network, HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use only what is cached. "
        + manual_instructions(entry)
    )


def remove_abandoned_partials(repo):
    """Removes the partial downloads of `repo` that no process is writing any more.

    huggingface_hub writes a blob as `<etag>.<random>.incomplete` while holding the file lock
    `.locks/<repo folder>/<etag>.lock`; the operating system releases the lock of a killed
    process, so a partial whose lock can be taken at once is abandoned.
    """
    # The cache's documented layout: models--{owner}--{name}/blobs, .locks/models--{owner}--{name}.
    folder = "models--" + repo.replace("/", "--")
    blobs = os.path.join(hub_cache_dir(), folder, "blobs")
    for partial in glob.glob(os.path.join(glob.escape(blobs), "*.incomplete")):
        etag = os.path.basename(partial).split(".")[0]
        lock = filelock.FileLock(os.path.join(hub_cache_dir(), ".locks", folder, f"{etag}.lock"))
        try:
            with lock.acquire(timeout=0):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(partial)
        except filelock.Timeout:
            continue


def _verify(entry, path):
    """The SHA-256 of the downloaded file, which must be the pinned one or the hub's LFS id."""
    blob = os.path.realpath(path)
    reported = os.path.basename(blob)
    if not entry.sha256 and _GIT_SHA1.fullmatch(reported):
        # A file kept in Git itself (config.json): the hub's ETag is its Git blob id.
        if _git_blob_id(path) != reported:
            _remove(path, blob)
            raise ChecksumError(
                f"{describe(entry)}: the downloaded file is not Git blob {reported}, the id the hub "
                "reported; it was removed from huggingface_hub's cache."
            )
        return atomic.sha256_file(path)
    expected = entry.sha256 or (reported if _SHA256.fullmatch(reported) else None)
    if expected is None:
        raise ChecksumError(
            f"{describe(entry)}: nothing to verify the download against: keras_cvt.pretrained pins "
            "no SHA-256 for it and the hub reported none (an X-Linked-Etag or ETag header of 64 "
            f"hex digits from the resolve URL; got {reported!r}), so it is not used. "
            + manual_instructions(entry)
        )
    actual = atomic.sha256_file(path)
    size = os.path.getsize(path)
    if actual != expected:
        _remove(path, blob)
        source = "pinned in keras_cvt.pretrained" if entry.sha256 else "reported by the hub"
        raise ChecksumError(
            f"{describe(entry)}: the downloaded file ({size} bytes) has SHA-256 {actual}, expected {expected} ({source}); it was removed from "
            f"huggingface_hub's cache. A proxy or mirror (HF_ENDPOINT) may serve a different file. "
            + manual_instructions(entry)
        )
    return actual


def _remove(*paths):
    # Kept, huggingface_hub would serve the wrong bytes again on every later call.
    for path in set(paths):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _git_blob_id(path):
    digest = hashlib.sha1(f"blob {os.path.getsize(path)}\0".encode())
    with open(path, "rb") as f:
        digest.update(f.read())
    return digest.hexdigest()


class _Transient(Exception):
    """One attempt failed in a way that another attempt may not; `__cause__` says how."""


class _Silent(hf_tqdm):
    def __init__(self, *args, **kwargs):
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


class _Progress(hf_tqdm):
    """huggingface_hub's bar on a terminal; off one (logs, CI), where its bar is disabled, a
    line per tenth of the file and one when done, instead of nothing.

    `HF_HUB_DISABLE_PROGRESS_BARS` still silences both."""

    def __init__(self, *args, **kwargs):
        self._lines = kwargs.get("disable") is None and not _is_terminal(kwargs.get("file") or sys.stderr)
        if self._lines:
            kwargs["disable"] = False
        self._tenth = -1
        super().__init__(*args, **kwargs)

    def display(self, msg=None, pos=None):
        if not self._lines:
            return super().display(msg, pos)
        tenth = int(10 * self.n / self.total) if self.total else 0
        if tenth > self._tenth:
            self._tenth = tenth
            self.fp.write(str(self).strip() + "\n")
            self.fp.flush()
        return True


def _is_terminal(stream):
    return hasattr(stream, "isatty") and stream.isatty()


def _call(entry, progress=True, dry_run=False):
    """`hf_hub_download` of `entry`'s file, its failures told apart: transient ones raised as
    `_Transient`, refusals as `NotFoundError`/`HubError`."""
    _watch_session()
    _deadline.at = time.monotonic() + deadline_s()
    try:
        return huggingface_hub.hf_hub_download(
            entry.repo,
            entry.filename,
            revision=entry.revision,
            endpoint=endpoint(),
            local_files_only=offline(),
            library_name="keras-cvt",
            library_version=_version.__version__,
            tqdm_class=_Progress if progress else _Silent,
            dry_run=dry_run,
        )
    except hf_errors.LocalEntryNotFoundError:
        raise
    except _DeadlinePassed as error:
        raise DeadlineError(
            f"downloading {describe(entry)} took longer than {deadline_s():g} s (a slow server or "
            "link; KERAS_CVT_DOWNLOAD_DEADLINE_S sets the limit); the partial file was removed. "
            + manual_instructions(entry)
        ) from error
    except hf_errors.GatedRepoError as error:
        raise HubError(
            f"{describe(entry)}: the repository is gated: accept its conditions on the hub and set "
            f"HF_TOKEN to a token of that account ({describe_error(error)}). " + manual_instructions(entry)
        ) from error
    except (
        hf_errors.RepositoryNotFoundError,
        hf_errors.RevisionNotFoundError,
        hf_errors.RemoteEntryNotFoundError,
    ) as error:
        raise NotFoundError(
            f"{describe(entry)}: the repository, revision or file does not exist there, or is "
            f"private (set HF_TOKEN to a token that may read it); check HF_ENDPOINT too: "
            f"{describe_error(error)}. " + manual_instructions(entry)
        ) from error
    except hf_errors.HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status in _TRANSIENT_STATUS:
            raise _Transient() from error
        hint = "set HF_TOKEN to a token that may read it" if status in (401, 403) else "the hub refused it"
        raise HubError(f"{describe(entry)}: HTTP {status}: {hint}. " + manual_instructions(entry)) from error
    except (httpx2.TransportError, OSError) as error:
        # huggingface_hub raises a bare OSError for a body shorter than the size the hub reported
        # ("Consistency check failed"), which a second attempt usually mends.
        raise _Transient() from error
    finally:
        _deadline.at = None


# --- the overall deadline: a response hook on huggingface_hub's HTTP client ---


class _DeadlinePassed(Exception):
    """Raised inside the transfer; not an httpx error, so huggingface_hub does not retry it."""


_deadline = threading.local()


class _DeadlineStream(httpx2.SyncByteStream):
    def __init__(self, stream, at):
        self.stream, self.at = stream, at

    def __iter__(self):
        for chunk in self.stream:
            if time.monotonic() > self.at:
                raise _DeadlinePassed()
            yield chunk

    def close(self):
        self.stream.close()


def _limit_response(response):
    at = getattr(_deadline, "at", None)
    if at is not None:
        response.stream = _DeadlineStream(response.stream, at)


def _watch_session():
    """Hooks the deadline into huggingface_hub's client (made anew after `close_session`);
    the hook acts only on the thread of a download of ours."""
    hooks = huggingface_hub.get_session().event_hooks
    if _limit_response not in hooks["response"]:
        hooks["response"] = [*hooks["response"], _limit_response]
        huggingface_hub.get_session().event_hooks = hooks

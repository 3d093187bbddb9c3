"""Downloading the original checkpoints from the HuggingFace hub, with the standard library only.

A file is fetched from `{endpoint}/{repo}/resolve/{revision}/{filename}` (the hub answers with
a redirect to its CDN), resumed with HTTP Range requests after a dropped connection, and
verified by SHA-256 before it gets its final name: against the checksum pinned in
`keras_cvt.pretrained` when there is one, otherwise against the Git LFS id that the hub reports
for the file. `HF_ENDPOINT` and `HF_HUB_OFFLINE` mean what they mean to `huggingface_hub`.
"""

import hashlib
import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from keras_cvt import atomic

DEFAULT_ENDPOINT = "https://huggingface.co"
# Attempts per file, and the first wait between them (doubled after each failure).
ATTEMPTS = 4
BACKOFF_S = 1.0
# Per socket operation: long enough for a slow CDN, short enough that a dead one is noticed.
TIMEOUT_S = 60.0
_CHUNK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
_BUILDERS = {"cvt13": "CvT13", "cvt21": "CvT21", "cvtw24": "CvTW24"}
# A server that fails now may not in a second; anything else (404, 401, 403) will not improve.
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}


class HubError(OSError):
    """A pretrained checkpoint could not be fetched (or was refused) from the hub."""


class ChecksumError(HubError):
    """The downloaded bytes are not the expected file."""


class OfflineError(HubError):
    """`HF_HUB_OFFLINE` forbids the download that a pretrained name needs."""


class _TransientError(Exception):
    """One attempt failed in a way that another attempt may not."""


class _RangeRefused(_TransientError):
    """The server will not resume there (HTTP 416): the next attempt starts from zero."""


def endpoint():
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def offline():
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def url_for(entry):
    """The hub URL of a `keras_cvt.pretrained.Pretrained` entry's file."""
    return f"{endpoint()}/{entry.repo}/resolve/{entry.revision}/{entry.filename}"


def describe(entry):
    return f"{entry.filename} of {entry.repo} at revision {entry.revision} ({url_for(entry)})"


def manual_instructions(entry):
    """How to do by hand what the download does, for machines that cannot reach the hub."""
    builder = _BUILDERS.get(entry.variant, entry.variant)
    output = f"{entry.variant}_{entry.name}.weights.h5"
    check = f"; its SHA-256 must be {entry.sha256}" if entry.sha256 else ""
    # A file path does not carry the checkpoint's resolution, which a name makes the default.
    shape = f", input_shape=({entry.resolution}, {entry.resolution}, 3)" if entry.resolution != 224 else ""
    return (
        f"To install these weights by hand, download {url_for(entry)} (e.g. `curl -L -o "
        f"{entry.filename} {url_for(entry)}`){check}, convert it with `python -m weights_conversion "
        f"{entry.filename} {output}`, then pass the file: `{builder}(weights=\"{output}\"{shape})`."
    )


def download(entry, path, progress=True):
    """Downloads `entry`'s file to `path`, which appears only once its SHA-256 is verified.

    The bytes go to a temporary file beside `path` (`keras_cvt.atomic.publish_file`); a failure
    of any kind removes it, so a wrong or truncated file never takes the final name.

    Raises:
        OfflineError: `HF_HUB_OFFLINE` is set.
        ChecksumError: no checksum to verify against, or the bytes do not match it.
        HubError: the hub refused the file (404...) or the transfer kept failing.
    """
    if offline():
        raise OfflineError(
            f"HF_HUB_OFFLINE is set, so {describe(entry)} cannot be downloaded. "
            + manual_instructions(entry)
        )
    with atomic.publish_file(path) as temporary, open(temporary, "wb") as file:
        digest = _fetch(entry, file, progress)
    return digest


class _Transfer:
    """What has been received so far, kept across attempts so that a retry resumes it."""

    def __init__(self, file, expected):
        self.file = file
        self.expected = expected
        self.restart()

    def restart(self):
        self.file.seek(0)
        self.file.truncate()
        self.hasher = hashlib.sha256()
        self.received = 0

    def write(self, chunk):
        self.file.write(chunk)
        self.hasher.update(chunk)
        self.received += len(chunk)


def _fetch(entry, file, progress):
    """Streams the file into `file` over as many attempts as it takes; returns its SHA-256."""
    transfer = _Transfer(file, entry.sha256)
    bar = _Progress(f"{entry.repo}/{entry.filename}", enabled=progress)
    wait = BACKOFF_S
    try:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                _attempt(entry, transfer, bar)
                break
            except _TransientError as error:
                bar.stop()
                if isinstance(error, _RangeRefused):
                    transfer.restart()
                if attempt == ATTEMPTS:
                    raise HubError(
                        f"downloading {describe(entry)} failed {ATTEMPTS} times; last: {error}. "
                        + manual_instructions(entry)
                    ) from error
                print(f"{entry.repo}/{entry.filename}: {error}; retrying in {wait:g} s", file=sys.stderr)
                time.sleep(wait)
                wait *= 2
    finally:
        bar.stop()
    actual = transfer.hasher.hexdigest()
    if actual != transfer.expected:
        source = "pinned in keras_cvt.pretrained" if entry.sha256 else "reported by the hub"
        raise ChecksumError(
            f"{describe(entry)}: the downloaded {transfer.received} bytes have SHA-256 {actual}, "
            f"expected {transfer.expected} ({source}); the file was discarded. A proxy or mirror "
            "(HF_ENDPOINT) may serve a different file. " + manual_instructions(entry)
        )
    return actual


def _attempt(entry, transfer, bar):
    """One request for the bytes from `transfer.received` on."""
    # Range asks for the rest only; a server that ignores it sends everything again (200
    # rather than 206), and the file restarts from zero.
    response, hub_answers = _open(url_for(entry), entry, transfer.received)
    with response:
        if transfer.expected is None:
            transfer.expected = _reported_sha256(entry, hub_answers)
        if response.status == 206:
            start, total = _content_range(response.headers)
            if start != transfer.received:
                raise _TransientError(f"the server resumed at byte {start}, not {transfer.received}")
        else:
            transfer.restart()
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
        bar.start(transfer.received, total)
        try:
            while chunk := response.read(_CHUNK):
                transfer.write(chunk)
                bar.update(transfer.received)
        except (OSError, http.client.HTTPException) as error:
            raise _TransientError(
                f"the connection broke after {transfer.received} bytes: {error}"
            ) from error
    if total is not None and transfer.received != total:
        # http.client returns a short body without complaint when the server closes early,
        # so the length is the only sign of a truncated transfer.
        raise _TransientError(f"the transfer ended after {transfer.received} of {total} bytes")


class _RecordingRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects like urllib does, remembering each hop's URL and headers."""

    def __init__(self):
        self.hops = []

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.hops.append((req.full_url, headers))
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _open(url, entry, offset):
    """Opens `url` from byte `offset`: (response, headers of the hub's own answers, in order).

    The hub's answers are those from the resolve URL's host: the resolve URL itself and any
    redirect within the hub (huggingface.co sends some files through a relative redirect
    first), but not the CDN, whose ETag is its own business (often an MD5).
    """
    redirects = _RecordingRedirects()
    opener = urllib.request.build_opener(redirects)
    # identity: a compressed body would break both Range offsets and Content-Length checks.
    headers = {"User-Agent": "keras-cvt", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        request = urllib.request.Request(url, headers=headers)
    except ValueError as error:
        raise HubError(f"{describe(entry)}: not a URL ({error}); check HF_ENDPOINT") from error
    try:
        response = opener.open(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        error.close()
        if error.code in _TRANSIENT_STATUS:
            raise _TransientError(f"HTTP {error.code} {error.reason}") from error
        if error.code == 416 and offset:
            raise _RangeRefused(f"the server cannot resume at byte {offset} (HTTP 416)") from error
        hint = {
            404: "the repository, revision or file does not exist there (a wrong HF_ENDPOINT "
            "or a removed revision)",
            401: "the hub wants authentication, which these public repositories should not need",
            403: "the hub refused access",
        }.get(error.code, "the hub refused the request")
        raise HubError(
            f"{describe(entry)}: HTTP {error.code} {error.reason}: {hint}. " + manual_instructions(entry)
        ) from error
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        # A URLError whose reason is no OSError (an unknown URL scheme...) will not heal.
        if isinstance(error, urllib.error.URLError) and not isinstance(error.reason, OSError):
            raise HubError(f"{describe(entry)}: {error.reason}. " + manual_instructions(entry)) from error
        raise _TransientError(f"cannot reach {url}: {getattr(error, 'reason', error)}") from error
    host = urllib.parse.urlsplit(url).netloc
    answers = redirects.hops + [(response.url, response.headers)]
    return response, [headers for at, headers in answers if urllib.parse.urlsplit(at).netloc == host]


def _reported_sha256(entry, answers):
    """The LFS SHA-256 that the hub's answers report for the file, or ChecksumError."""
    seen = []
    for headers in answers:
        for name in ("X-Linked-Etag", "ETag"):
            value = headers.get(name)
            if value is None:
                continue
            seen.append(f"{name}={value!r}")
            value = value.strip()
            value = value[2:] if value.startswith("W/") else value
            value = value.strip('"').lower()
            if _SHA256.fullmatch(value):
                return value
    raise ChecksumError(
        f"{describe(entry)}: nothing to verify the download against: keras_cvt.pretrained pins "
        "no SHA-256 for it and the server reported none (an X-Linked-Etag or ETag header of "
        f"64 hex digits from the resolve URL; got {', '.join(seen) or 'neither'}), so it was not "
        "downloaded. " + manual_instructions(entry)
    )


def _content_range(headers):
    """(first byte, total length or None) from a 206 answer's Content-Range."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", headers.get("Content-Range", ""))
    if match is None:
        raise _TransientError(f"unreadable Content-Range {headers.get('Content-Range')!r}")
    total = match.group(3)
    return int(match.group(1)), (None if total == "*" else int(total))


class _Progress:
    """A one-line progress bar on stderr; silent when stderr is not a terminal (logs, CI)."""

    def __init__(self, label, enabled):
        self.label = label
        self.enabled = enabled and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        self.active = False

    def start(self, received, total):
        self.total, self.t0, self.base, self.shown = total, time.monotonic(), received, 0.0
        self.active = True
        self.update(received, force=True)

    def update(self, received, force=False):
        if not (self.enabled and self.active):
            return
        now = time.monotonic()
        if not force and now - self.shown < 0.2:
            return
        self.shown = now
        rate = (received - self.base) / max(now - self.t0, 1e-6) / 1e6
        done = f"{received / 1e6:.1f}"
        if self.total:
            done += f"/{self.total / 1e6:.1f} MB ({100 * received / self.total:.0f}%)"
        else:
            done += " MB"
        sys.stderr.write(f"\rDownloading {self.label}: {done} {rate:.1f} MB/s ")
        sys.stderr.flush()

    def stop(self):
        if self.enabled and self.active:
            sys.stderr.write("\n")
            sys.stderr.flush()
        self.active = False

"""Pretrained names: download from the hub, verify, convert, cache; all offline.

A local HTTP server on 127.0.0.1 (`FakeHub`) stands in for the hub at `HF_ENDPOINT` and answers
as huggingface.co does: HEAD and GET on resolve URLs with X-Repo-Commit, a 302 to a CDN on
another host (127.0.0.2) carrying X-Linked-Etag (the LFS SHA-256) and X-Linked-Size, Git files
with their blob id as ETag, Range on the CDN; faults (503, cut bodies, trickles, no etag,
private repos) on demand. huggingface_hub does the downloads, into a cache under tmp_path. The
file it serves is the CvT-13 original-code reference checkpoint written as HuggingFace's
`tf_model.h5`, so the end-to-end tests end where the parity tests do: the original's logits.
"""

import dataclasses
import glob
import hashlib
import http.server
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import types

import h5py
import huggingface_hub
import numpy as np
import pytest

import keras_cvt
from keras_cvt import CvT, CvT13, CvTW24, atomic, downloads, pretrained
from keras_cvt import cache, weights_file
from tests.conftest import FIXTURES, ROOT, assert_same_weights_files, reference_file
from keras_cvt.conversion import read_checkpoint

TOLERANCE = 1e-4
UNPINNED = ("cvt13", "imagenet22k-384")  # revision "main", no known SHA-256
PINNED = ("cvt13", "imagenet")  # a full commit and a SHA-256


# --- HuggingFace's tf_model.h5 layout (shared/docs/hf-tf-h5.md), written from original keys ---

_TF_PREFIX = "tf_cvt_for_image_classification"
# original module (after `stage{i}.`) -> (TF scope under `stages.{i}/`, kind)
_ATTENTION = r"layers.\1/attention/attention"
_CONV_PROJECTION = _ATTENTION + r"/convolution_projection_\2/convolution_projection"
_MODULES = [
    (r"patch_embed\.proj", "embedding/convolution_embeddings/projection", "conv"),
    (r"patch_embed\.norm", "embedding/convolution_embeddings/normalization", "norm"),
    (r"blocks\.(\d+)\.norm1", r"layers.\1/layernorm_before", "norm"),
    (r"blocks\.(\d+)\.norm2", r"layers.\1/layernorm_after", "norm"),
    (r"blocks\.(\d+)\.attn\.conv_proj_(q|k|v)\.conv", _CONV_PROJECTION + "/convolution", "conv"),
    (r"blocks\.(\d+)\.attn\.conv_proj_(q|k|v)\.bn", _CONV_PROJECTION + "/normalization", "norm"),
    (r"blocks\.(\d+)\.attn\.proj_(q|k|v)", _ATTENTION + r"/projection_\2", "dense"),
    (r"blocks\.(\d+)\.attn\.proj", r"layers.\1/attention/output/dense", "dense"),
    (r"blocks\.(\d+)\.mlp\.fc1", r"layers.\1/intermediate/dense", "dense"),
    (r"blocks\.(\d+)\.mlp\.fc2", r"layers.\1/output/dense", "dense"),
]
_QKV = {"q": "query", "k": "key", "v": "value"}
_LEAVES = {
    "conv": {"weight": "kernel", "bias": "bias"},
    "dense": {"weight": "kernel", "bias": "bias"},
    "norm": {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"},
}
# PyTorch -> TensorFlow: Conv2d (O, I, kh, kw) -> HWIO (depthwise (C, 1, 3, 3) -> (3, 3, 1, C));
# Linear (out, in) -> (in, out).
_TRANSPOSE = {("conv", "weight"): (2, 3, 1, 0), ("dense", "weight"): (1, 0)}


def _tf_weight(key, value):
    """(top-level layer, TF variable name, array) for an original key, or None to drop it."""
    if key == "stage2.cls_token":
        # Created outside any name scope by TFCvtStage, hence the dotted name.
        return "cvt", "cvt.encoder.stages.2.cls_token:0", value
    if key.endswith("num_batches_tracked"):
        return None
    top = re.fullmatch(r"(norm|head)\.(weight|bias)", key)
    if top:
        layer, kind = ("layernorm", "norm") if top.group(1) == "norm" else ("classifier", "dense")
        leaf = top.group(2)
        scope = f"{_TF_PREFIX}/{layer}"
    else:
        stage, module, leaf = re.fullmatch(r"stage(\d+)\.(.+)\.(\w+)", key).groups()
        for pattern, replacement, kind in _MODULES:
            if re.fullmatch(pattern, module):
                path = re.sub(pattern, replacement, module)
                break
        else:
            raise KeyError(key)
        path = re.sub(r"_(q|k|v)(?=/|$)", lambda m: "_" + _QKV[m.group(1)], path)
        layer, scope = "cvt", f"{_TF_PREFIX}/cvt/encoder/stages.{stage}/{path}"
    permutation = _TRANSPOSE.get((kind, leaf))
    array = value if permutation is None else np.transpose(value, permutation)
    return layer, f"{scope}/{_LEAVES[kind][leaf]}:0", np.ascontiguousarray(array)


def _save_attribute(group, name, values):
    # Keras 2 splits a list attribute over name0, name1, ... beyond HDF5's 64 KB header limit.
    data = np.asarray(values)
    chunks = 1
    while any(c.nbytes > 64512 for c in np.array_split(data, chunks)):
        chunks += 1
    if chunks == 1:
        group.attrs[name] = data
    else:
        for i, chunk in enumerate(np.array_split(data, chunks)):
            group.attrs[f"{name}{i}"] = chunk


def write_hf_tf_h5(state, path):
    """Writes an original-key state dict as transformers' TFCvtForImageClassification saves it."""
    layers = {"cvt": [], "layernorm": [], "classifier": []}
    for key, value in state.items():
        weight = _tf_weight(key, value)
        if weight is not None:
            layers[weight[0]].append(weight[1:])
    with h5py.File(path, "w") as f:
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.21.0"
        _save_attribute(f, "layer_names", [name.encode() for name in layers])
        for layer in sorted(layers):
            group = f.create_group(layer)
            _save_attribute(group, "weight_names", [name.encode() for name, _ in layers[layer]])
            for name, array in layers[layer]:
                group.create_dataset(name, data=array)
        # Keras >= 2.13 adds the model's own (here: no) variables as a group outside layer_names.
        _save_attribute(f.create_group("top_level_model_weights"), "weight_names", [])


def _h5_contents(path):
    """Datasets (dtype, shape, bytes) and names, with Keras' numbering of model scopes undone."""

    def plain(name):
        name = name.decode() if isinstance(name, bytes) else str(name)
        return re.sub(r"^(\w+/)?tf_cvt_for_image_classification_\d+/", r"\1tf_cvt_for_image_classification/", name)

    datasets = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, item: datasets.__setitem__(plain(name), (item.dtype, item.shape, item[()].tobytes()))
            if isinstance(item, h5py.Dataset)
            else None
        )
        names = {group: [plain(n) for n in f[group].attrs["weight_names"]] for group in f}
        layers = [plain(n) for n in f.attrs["layer_names"]]
    return datasets, names, layers


def test_helper_writes_what_transformers_writes(tmp_path):
    # The served file is only as good as its likeness to the hub's: rewriting a file that
    # transformers' TFCvtForImageClassification wrote gives back every dataset, bit for bit,
    # under the same names in the same order.
    real = FIXTURES / "hf_tiny_tf_model.h5"
    ours = tmp_path / "tf_model.h5"
    write_hf_tf_h5(read_checkpoint(real), ours)
    assert _h5_contents(ours) == _h5_contents(real)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(bytes, SHA-256) of the CvT-13 reference checkpoint as a HuggingFace tf_model.h5."""
    import torch

    state = torch.load(reference_file("cvt13_official_perturbed.pth"), map_location="cpu", weights_only=True)
    path = tmp_path_factory.mktemp("hub") / "tf_model.h5"
    write_hf_tf_h5({k: v.numpy() for k, v in state.items()}, path)
    data = path.read_bytes()
    return data, hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def reference_io():
    io = np.load(reference_file("cvt13_official_perturbed_io.npz"))
    return io["x"].transpose(0, 2, 3, 1), io["logits"]


# --- the stand-in hub ---


@dataclasses.dataclass
class _File:
    data: bytes
    commit: str  # what X-Repo-Commit says
    etag: str | None  # the SHA-256 the hub reports (or a Git blob id); None: no ETag at all
    redirect: bool = True  # 302 to a CDN path, like LFS files on huggingface.co
    linked_etag: bool = True  # X-Linked-Etag on the redirect (else ETag alone)
    truncate: int = 0  # how many CDN answers stop halfway (Content-Length promises all)
    unsized: bool = False  # CDN answers without Content-Length (chunked), so a cut is not seen
    unavailable: int = 0  # how many CDN answers are 503 first
    ranges: bool = True  # honours Range (206); else answers every request in full (200)
    relay: bool = False  # first a relative 307 within the hub, without etags (as for some hub files)
    trickle: float = 0.0  # seconds between 2 KB pieces of the body
    token: str | None = None  # the HF_TOKEN a private repo wants


def git_blob_id(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """Answers like huggingface.co: HEAD and GET on /{repo}/resolve/{revision}/{file} with
    X-Repo-Commit, a 302 to a CDN host for LFS files (X-Linked-Etag, X-Linked-Size), a 200
    with a Git blob id ETag for files kept in Git; 401 RepoNotFound for a private repo without
    its token; the CDN honours Range."""

    def __init__(self):
        self.files = {}
        self.requests = []  # (method, path, Range header, Authorization header)
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                hub.requests.append(("GET", self.path, self.headers.get("Range"), self.headers.get("Authorization")))
                hub._answer(self, body=True)

            def do_HEAD(self):
                hub.requests.append(("HEAD", self.path, self.headers.get("Range"), self.headers.get("Authorization")))
                hub._answer(self, body=False)

            def log_message(self, *args):
                pass

        # The hub, and its CDN on another host (huggingface_hub follows redirects within a host).
        self.servers = [http.server.ThreadingHTTPServer((host, 0), Handler) for host in ("127.0.0.1", "127.0.0.2")]
        self.url, self.cdn_url = (f"http://{host}:{port}" for host, port in (s.server_address for s in self.servers))
        self.threads = []
        for server in self.servers:
            server.daemon_threads = True
            # A short poll keeps shutdown() quick: it waits for the serving loop to notice.
            self.threads.append(threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True))
            self.threads[-1].start()

    def add(self, repo, revision, data, etag="sha256", filename="tf_model.h5", commit=None, **options):
        """Serves `data` at the resolve URL of `revision` and of its commit (a branch gets one
        made from its content, so new content is a new commit); etag="sha256" reports the true
        SHA-256 of `data`, etag="git" its Git blob id (a file kept in Git, not LFS)."""
        if etag == "sha256":
            etag = hashlib.sha256(data).hexdigest()
        elif etag == "git":
            etag = git_blob_id(data)
            options.setdefault("redirect", False)
        if commit is None:
            commit = revision if re.fullmatch(r"[0-9a-f]{40}", revision) else hashlib.sha1(repo.encode() + data).hexdigest()
        file = _File(data, commit, etag, **options)
        for at in {revision, commit}:
            self.files[f"/{repo}/resolve/{at}/{filename}"] = file
        return file

    def get_requests(self, prefix="/"):
        return [(path, r) for method, path, r, _ in self.requests if method == "GET" and path.startswith(prefix)]

    def stop(self):
        for server, thread in zip(self.servers, self.threads):
            if thread.is_alive():
                server.shutdown()
                server.server_close()
                thread.join()

    def _answer(self, handler, body):
        # Three stages of one file: its resolve URL, the hub's relay of it, its CDN copy.
        stage, key = "resolve", handler.path
        for prefix in ("/cdn", "/api/resolve-cache"):
            if handler.path.startswith(prefix + "/"):
                stage, key = prefix, handler.path[len(prefix) :]
        file = self.files.get(key)
        if file is None:
            self._headers(handler, 404, {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found"})
            return
        if file.token is not None and stage != "/cdn" and handler.headers.get("Authorization") != f"Bearer {file.token}":
            self._headers(handler, 401, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Invalid credentials"})
            return
        if file.relay and stage == "resolve":
            self._headers(handler, 307, {"Location": f"/api/resolve-cache{key}", "X-Repo-Commit": file.commit})
            return
        if file.redirect and stage != "/cdn":
            headers = {"Location": f"{self.cdn_url}/cdn{key}", "X-Repo-Commit": file.commit}
            if file.etag is not None:
                headers["X-Linked-Etag" if file.linked_etag else "ETag"] = f'"{file.etag}"'
                headers["X-Linked-Size"] = str(len(file.data))
            self._headers(handler, 302, headers)
            return
        if stage == "/cdn" and file.unavailable:
            file.unavailable -= 1
            self._headers(handler, 503, {})
            return
        start, status, headers = 0, 200, {"Accept-Ranges": "bytes"}
        match = re.fullmatch(r"bytes=(\d+)-", handler.headers.get("Range") or "")
        if match and file.ranges:
            start, status = int(match.group(1)), 206
            headers["Content-Range"] = f"bytes {start}-{len(file.data) - 1}/{len(file.data)}"
        payload = file.data[start:]
        if not file.redirect:
            headers["X-Repo-Commit"] = file.commit
            if file.etag is not None:
                headers["ETag"] = f'"{file.etag}"'
        if file.unsized:
            headers["Connection"] = "close"  # the end of the body is the end of the connection
        else:
            headers["Content-Length"] = str(len(payload))
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        if not body:
            return
        if stage == "/cdn" and file.truncate:
            file.truncate -= 1
            payload = payload[: len(payload) // 2]
        try:
            if file.trickle:
                for at in range(0, len(payload), 2048):
                    handler.wfile.write(payload[at : at + 2048])
                    handler.wfile.flush()
                    threading.Event().wait(file.trickle)
            else:
                handler.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass
        handler.close_connection = True

    @staticmethod
    def _headers(handler, status, headers):
        handler.send_response(status)
        for name, value in {**headers, "Content-Length": "0"}.items():
            handler.send_header(name, value)
        handler.end_headers()


@pytest.fixture
def fake_hub(monkeypatch):
    server = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Cache under tmp_path; no real hub (a closed port) unless a test starts the fake one."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    for name in ("HF_HUB_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "KERAS_CVT_DOWNLOAD_DEADLINE_S"):
        monkeypatch.delenv(name, raising=False)
    # Retries are part of what is tested; waiting between them is not.
    monkeypatch.setattr(downloads, "BACKOFF_S", 0.0)


@pytest.fixture(autouse=True)
def hub_waits(monkeypatch):
    """huggingface_hub's own back-off, recorded instead of slept: like keras_cvt's, its retries
    are tested and its waiting is not (for an unreachable hub, about 20 s per request)."""
    waits = []
    monkeypatch.setattr(huggingface_hub.utils._http, "time", types.SimpleNamespace(sleep=waits.append))
    return waits


def cache_contents():
    """Every entry of our cache directory, hidden ones (partial conversions) included."""
    directory = cache.cache_dir()
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def hub_partials():
    """The partial downloads in huggingface_hub's cache."""
    return glob.glob(os.path.join(downloads.hub_cache_dir(), "*", "blobs", "*.incomplete"))


def hub_blobs(repo):
    folder = os.path.join(downloads.hub_cache_dir(), "models--" + repo.replace("/", "--"), "blobs")
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def entry_of(variant, name):
    return pretrained.lookup(variant, name)


def assert_names_the_file(error, entry):
    message = str(error)
    for part in (entry.repo, entry.revision, entry.filename, downloads.url_for(entry)):
        assert part in message
    # The manual route: download, convert, pass the path.
    assert "python -m keras_cvt.conversion" in message
    assert "weights=" in message


def repin(monkeypatch, variant, name, sha256):
    entries = tuple(
        dataclasses.replace(p, sha256=sha256) if (p.variant, p.name) == (variant, name) else p
        for p in pretrained.PRETRAINED
    )
    monkeypatch.setattr(pretrained, "PRETRAINED", entries)
    return entry_of(variant, name)


HAND_COMMIT = "c0ffee" + "0" * 34


def install(entry, converted, commit=None):
    """Puts a converted file into the cache as a download would: the file, then its record."""
    commit = commit or (entry.revision if entry.sha256 else HAND_COMMIT)
    target = cache.cached_path(entry, commit)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copyfile(converted, target)
    cache.write_record(entry, target, atomic.sha256_file(converted), commit)
    return target


# --- downloads through the builders ---


@pytest.mark.slow  # CvT-13 downloaded, converted, built and run (twice)
def test_download_convert_cache_then_reuse_without_network(fake_hub, served, reference_io):
    data, sha = served
    x, logits = reference_io
    entry = entry_of(*UNPINNED)
    served_file = fake_hub.add(entry.repo, entry.revision, data)

    model = CvT13(weights="imagenet22k-384", include_preprocessing=False, classifier_activation=None,
                  input_shape=(224, 224, 3))
    assert np.abs(model.predict(x, verbose=0) - logits).max() <= TOLERANCE
    # Asked which commit main is, fetched the file at that commit (following the redirect)
    # once, verified against the hub's LFS id (no pin).
    assert entry.sha256 is None
    commit = served_file.commit
    assert [(m, p) for m, p, _, _ in fake_hub.requests] == [
        ("HEAD", f"/{entry.repo}/resolve/main/tf_model.h5"),
        ("HEAD", f"/{entry.repo}/resolve/{commit}/tf_model.h5"),
        ("GET", f"/cdn/{entry.repo}/resolve/{commit}/tf_model.h5"),
    ]
    # Ours: the converted file, named by the commit, and its record; huggingface_hub's: the download.
    converted = f"cvt13_imagenet22k-384_{commit[:12]}.weights.h5"
    assert cache_contents() == [converted, converted + ".json"]
    assert hub_blobs(entry.repo) == [sha]
    path = cache.cached_path(entry, commit)
    with open(cache.record_path(path)) as f:
        record = json.load(f)
    assert record["sha256"] == atomic.sha256_file(path) and record["size"] == os.path.getsize(path)
    assert record["source_sha256"] == sha and record["commit"] == commit
    assert (record["repo"], record["revision"], record["filename"]) == (entry.repo, "main", "tf_model.h5")
    assert record["keras_cvt"] == keras_cvt.__version__

    fake_hub.stop()
    again = CvT13(weights="imagenet22k-384", include_preprocessing=False, classifier_activation=None,
                  input_shape=(224, 224, 3))
    assert np.abs(again.predict(x, verbose=0) - logits).max() <= TOLERANCE
    assert len(fake_hub.requests) == 3


def test_upstream_change_of_main_is_noticed(fake_hub, served, cvt13_reference):
    # Converted weights of an older commit of main are in the cache; main has moved since.
    data, _ = served
    entry = entry_of(*UNPINNED)
    old = install(entry, cvt13_reference[0])
    new_commit = fake_hub.add(entry.repo, entry.revision, data).commit
    path = cache.fetch(entry, progress=False)
    assert path == cache.cached_path(entry, new_commit) != old
    # The new commit was downloaded and converted; the superseded conversion is gone.
    assert len(fake_hub.get_requests("/cdn/")) == 1
    assert cache_contents() == sorted([os.path.basename(path), os.path.basename(path) + ".json"])
    assert_same_weights_files(path, cvt13_reference[0])


@pytest.mark.slow  # CvT-13 downloaded, converted, built and run
def test_pinned_entry_verifies_against_the_pin(fake_hub, served, reference_io, monkeypatch):
    data, sha = served
    x, logits = reference_io
    entry = repin(monkeypatch, *PINNED, sha)
    # No etag of 64 hex digits: only the pin can have verified it.
    fake_hub.add(entry.repo, entry.revision, data, etag="0" * 32)

    model = CvT13(weights="imagenet", include_preprocessing=False, classifier_activation=None)
    assert model.input_shape == (None, 224, 224, 3)
    assert np.abs(model.predict(x, verbose=0) - logits).max() <= TOLERANCE
    assert fake_hub.requests[0][1] == f"/microsoft/cvt-13/resolve/{entry.revision}/tf_model.h5"
    converted = f"cvt13_imagenet_{entry.revision[:12]}.weights.h5"
    assert cache_contents() == [converted, converted + ".json"]


def test_file_already_in_huggingface_hub_cache_is_not_downloaded_again(fake_hub, served, monkeypatch):
    # A user who already has microsoft/cvt-13 from transformers: huggingface_hub's cache has it.
    data, sha = served
    entry = repin(monkeypatch, *PINNED, sha)
    fake_hub.add(entry.repo, entry.revision, data)
    huggingface_hub.hf_hub_download(entry.repo, "tf_model.h5", revision=entry.revision, endpoint=fake_hub.url)
    downloads = len(fake_hub.get_requests("/cdn/"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    CvT13(weights="imagenet")
    assert len(fake_hub.get_requests("/cdn/")) == downloads == 1


def test_wrong_pin_is_refused_and_nothing_cached(fake_hub, served, monkeypatch):
    data, sha = served
    wrong = hashlib.sha256(b"another file").hexdigest()
    entry = repin(monkeypatch, *PINNED, wrong)
    # The hub's etag is right: the pin wins.
    fake_hub.add(entry.repo, entry.revision, data)
    with pytest.raises(downloads.ChecksumError) as error:
        CvT13(weights="imagenet")
    assert_names_the_file(error.value, entry)
    assert wrong in str(error.value) and sha in str(error.value)
    assert cache_contents() == [] and hub_blobs(entry.repo) == []


def test_corrupted_download_is_refused_and_removed_from_both_caches(fake_hub, served):
    data, sha = served
    entry = entry_of(*UNPINNED)
    corrupted = bytearray(data)
    at = len(data) // 3
    corrupted[at : at + 8] = bytes(b ^ 0xFF for b in corrupted[at : at + 8])
    fake_hub.add(entry.repo, entry.revision, bytes(corrupted), etag=sha)
    with pytest.raises(downloads.ChecksumError) as error:
        CvT13(weights="imagenet22k-384")
    assert_names_the_file(error.value, entry)
    assert sha in str(error.value)
    assert cache_contents() == [] and hub_blobs(entry.repo) == []


def test_missing_file_404_is_refused_and_nothing_cached(fake_hub):
    entry = entry_of(*UNPINNED)
    with pytest.raises(downloads.NotFoundError) as error:
        CvT13(weights="imagenet22k-384")
    assert_names_the_file(error.value, entry)
    assert "404" in str(error.value)
    # Not retried: a missing file stays missing.
    assert len(fake_hub.requests) == 1
    assert cache_contents() == []


def test_no_checksum_anywhere_is_refused(fake_hub, served):
    data, _ = served
    entry = entry_of(*UNPINNED)
    fake_hub.add(entry.repo, entry.revision, data, etag=None)
    with pytest.raises(downloads.ChecksumError) as error:
        CvT13(weights="imagenet22k-384")
    assert_names_the_file(error.value, entry)
    assert "X-Linked-Etag" in str(error.value)
    assert cache_contents() == []


@pytest.mark.parametrize("value", ["1", "true", "YES"])
def test_offline_without_cache_raises_at_once(fake_hub, served, monkeypatch, value):
    data, _ = served
    entry = entry_of(*UNPINNED)
    fake_hub.add(entry.repo, entry.revision, data)
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    with pytest.raises(downloads.OfflineError) as error:
        CvT13(weights="imagenet22k-384")
    assert_names_the_file(error.value, entry)
    assert "HF_HUB_OFFLINE" in str(error.value)
    assert fake_hub.requests == []
    assert cache_contents() == []


@pytest.mark.parametrize("name", ["imagenet-384", "imagenet22k-384"])
def test_default_input_size_follows_the_weights(cvt13_reference, monkeypatch, name):
    # A converted file already in the cache, and no network allowed: loading is all that is left.
    install(entry_of("cvt13", name), cvt13_reference[0])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert CvT13(weights=name).input_shape == (None, 384, 384, 3)
    assert CvT13(weights=name, include_top=False).input_shape == (None, None, None, 3)


# --- the cache is verified before every use ---


def _flip_classifier_byte(path):
    """Flips the exponent byte of one classifier weight: HDF5 reads the file as before."""
    with h5py.File(path, "r") as f:
        kernel = f[weights_file._HEAD_KERNEL]
        offset, before = kernel.id.get_offset(), kernel[()]
    at = offset + 4 * (before.size // 2) + 3  # float32, little-endian: the last byte holds the exponent
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ 0x40]))
    with h5py.File(path, "r") as f:
        after = f[weights_file._HEAD_KERNEL][()]
    assert np.count_nonzero(after != before) == 1


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _empty(path):
    open(path, "wb").close()


def _drop_record(path):
    os.remove(cache.record_path(path))


def _edit_record(**changes):
    def edit(path):
        with open(cache.record_path(path)) as f:
            record = json.load(f)
        with open(cache.record_path(path), "w") as f:
            json.dump({**record, **changes}, f)

    return edit


def _garble_record(path):
    with open(cache.record_path(path), "w") as f:
        f.write('{"sha256": ')


# damage -> words that the refusal uses for it
DAMAGES = {
    "classifier byte flipped": (_flip_classifier_byte, "SHA-256"),
    "truncated": (_truncate, "bytes, its record says"),
    "emptied": (_empty, "has 0 bytes"),
    "record missing": (_drop_record, "is missing"),
    "record of other bytes": (_edit_record(sha256=hashlib.sha256(b"other").hexdigest()), "SHA-256"),
    "record unreadable": (_garble_record, "unreadable"),
    "record of an older format": (_edit_record(format=cache.CACHE_FORMAT - 1), "format"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_cache_is_refused_offline_with_what_to_delete(cvt13_reference, fake_hub, monkeypatch, damage):
    damage_file, words = DAMAGES[damage]
    entry = entry_of(*UNPINNED)
    path = install(entry, cvt13_reference[0])
    damage_file(path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError) as error:
        CvT13(weights="imagenet22k-384")
    message = str(error.value)
    assert f"{path} fail verification" in message and words in message
    assert f"delete {path} and {cache.record_path(path)}" in message
    assert_names_the_file(error.value, entry)
    assert fake_hub.requests == []


def test_damaged_cache_is_downloaded_and_converted_again(cvt13_reference, fake_hub, served):
    data, _ = served
    entry = entry_of(*UNPINNED)
    commit = fake_hub.add(entry.repo, entry.revision, data).commit
    path = install(entry, cvt13_reference[0], commit)
    _flip_classifier_byte(path)
    with pytest.warns(UserWarning, match=f"{re.escape(path)} fail verification .*SHA-256"):
        assert cache.fetch(entry, progress=False) == path
    assert len(fake_hub.get_requests("/cdn/")) == 1
    assert cache.verify_cached(entry, path, commit) is None
    assert_same_weights_files(path, cvt13_reference[0])
    assert cache_contents() == sorted([os.path.basename(path), os.path.basename(path) + ".json"])


def test_hub_unreachable_uses_the_last_conversion_or_names_the_damaged_file(cvt13_reference, hub_waits):
    entry = entry_of(*UNPINNED)
    path = install(entry, cvt13_reference[0])
    with pytest.warns(UserWarning, match=f"could not ask the hub .* using {re.escape(path)}"):
        assert cache.fetch(entry, progress=False) == path
    assert hub_waits  # after huggingface_hub's retries
    _drop_record(path)
    with pytest.warns(UserWarning, match=re.escape(path)), pytest.raises(downloads.HubError) as error:
        CvT13(weights="imagenet22k-384")
    message = str(error.value)
    assert f"the cached file {path} fails verification (its record" in message and "is missing" in message
    assert_names_the_file(error.value, entry)
    assert cache_contents() == [os.path.basename(path)]


# --- the transfer: faults of the hub and the network (small files: no model) ---


def _blob_entry(revision="0" * 40, sha256=None):
    return pretrained.Pretrained("cvt13", "blob", "test/blob", revision, sha256, 224, "none", 0.0)


def _download(entry, progress=False):
    path, digest, commit = downloads.download(entry, progress=progress)
    assert commit == entry.revision
    return pathlib.Path(path).read_bytes(), digest


@pytest.mark.parametrize("ranges", [True, False], ids=["resumed", "restarted"])
def test_download_resumes_a_cut_transfer_and_retries_503(fake_hub, ranges):
    # huggingface_hub writes (and resumes from) whole chunks: more than two, so that half is one.
    chunk = huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE
    data = np.random.RandomState(0).bytes(2 * chunk + 1)
    entry = _blob_entry()
    fake_hub.add(entry.repo, entry.revision, data, truncate=1, unavailable=1, ranges=ranges)
    assert _download(entry) == (data, hashlib.sha256(data).hexdigest())
    # 503 (retried here), cut halfway (resumed by huggingface_hub after the chunk it had).
    assert [r for _, r in fake_hub.get_requests("/cdn/")] == [None, None, f"bytes={chunk}-"]
    assert hub_partials() == []


def test_download_gives_up_after_attempts_and_leaves_nothing(fake_hub):
    entry = _blob_entry()
    fake_hub.add(entry.repo, entry.revision, b"d" * 1000, unavailable=downloads.ATTEMPTS)
    with pytest.raises(downloads.HubError, match=f"failed {downloads.ATTEMPTS} times; last: .*503") as error:
        downloads.download(entry, progress=False)
    assert_names_the_file(error.value, entry)
    assert len(fake_hub.get_requests("/cdn/")) == downloads.ATTEMPTS
    assert hub_partials() == [] and hub_blobs(entry.repo) == []


def test_download_retries_a_cut_body_without_content_length(fake_hub):
    # Nothing in the answer says the body is short, but X-Linked-Size of the HEAD does.
    data = np.random.RandomState(1).bytes(100_000)
    entry = _blob_entry()
    fake_hub.add(entry.repo, entry.revision, data, truncate=1, unsized=True)
    assert _download(entry)[0] == data
    assert len(fake_hub.get_requests("/cdn/")) == 2
    assert hub_partials() == []


def test_download_finds_the_etag_after_a_relative_redirect(fake_hub):
    data = b"r" * 1000
    entry = _blob_entry()
    fake_hub.add(entry.repo, entry.revision, data, relay=True)
    assert _download(entry)[1] == hashlib.sha256(data).hexdigest()
    # Ours (what the hub says the file is) and huggingface_hub's HEAD, each relayed; one GET.
    assert [(m, p.split("/")[1]) for m, p, _, _ in fake_hub.requests] == [("HEAD", "test"), ("HEAD", "api")] * 2 + [("GET", "cdn")]
    entry = _blob_entry("1" * 40)
    fake_hub.add(entry.repo, entry.revision, data, etag=hashlib.sha256(b"other").hexdigest(), relay=True)
    with pytest.raises(downloads.ChecksumError):
        downloads.download(entry, progress=False)
    assert hub_blobs(entry.repo) == [hashlib.sha256(data).hexdigest()]


def test_download_verifies_a_git_file_by_its_blob_id(fake_hub):
    # Files kept in Git (config.json) come without redirect, their ETag a Git blob id.
    data = b'{"model_type": "cvt"}'
    entry = dataclasses.replace(_blob_entry(), filename="config.json")
    fake_hub.add(entry.repo, entry.revision, data, etag="git", filename="config.json")
    assert _download(entry)[0] == data
    entry = dataclasses.replace(_blob_entry("1" * 40), filename="config.json")
    fake_hub.add(entry.repo, entry.revision, data, etag=git_blob_id(b"{}"), filename="config.json")
    with pytest.raises(downloads.ChecksumError, match="Git blob"):
        downloads.download(entry, progress=False)
    assert hub_blobs(entry.repo) == [git_blob_id(data)]


def test_download_reads_etag_when_no_linked_etag(fake_hub):
    data = b"z" * 1000
    entry = _blob_entry()
    fake_hub.add(entry.repo, entry.revision, data, etag=hashlib.sha256(b"other").hexdigest(), linked_etag=False)
    with pytest.raises(downloads.ChecksumError) as error:
        downloads.download(entry, progress=False)
    assert hashlib.sha256(b"other").hexdigest() in str(error.value)
    assert hub_blobs(entry.repo) == [] and hub_partials() == []


def test_private_repo_needs_hf_token(fake_hub, monkeypatch):
    data = b"p" * 1000
    entry = _blob_entry()
    fake_hub.add(entry.repo, entry.revision, data, token="hf_secret")
    with pytest.raises(downloads.NotFoundError, match="HF_TOKEN"):
        downloads.download(entry, progress=False)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    assert _download(entry)[0] == data
    assert ("HEAD", f"/{entry.repo}/resolve/{entry.revision}/tf_model.h5", None, "Bearer hf_secret") in fake_hub.requests


def test_trickling_server_meets_the_overall_deadline(fake_hub, monkeypatch):
    # 2 KB every 50 ms: never idle long enough for HF_HUB_DOWNLOAD_TIMEOUT, far from done in 1 s
    # (10 s in all). The deadline is checked at each chunk huggingface_hub reads: 16 KB here.
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 16 * 1024)
    monkeypatch.setenv("KERAS_CVT_DOWNLOAD_DEADLINE_S", "1")
    entry = _blob_entry()
    fake_hub.add(entry.repo, entry.revision, b"t" * 400_000, trickle=0.05)
    started = time.monotonic()
    with pytest.raises(downloads.DeadlineError, match="longer than 1 s") as error:
        downloads.download(entry, progress=False)
    # Cut at the first chunk after the deadline (16 KB take 0.4 s), not at the end (10 s).
    assert time.monotonic() - started < 4
    assert_names_the_file(error.value, entry)
    # Not retried (it would only take as long again), and the partial is gone.
    assert len(fake_hub.get_requests("/cdn/")) == 1
    assert hub_partials() == [] and hub_blobs(entry.repo) == []
    monkeypatch.setenv("KERAS_CVT_DOWNLOAD_DEADLINE_S", "soon")
    with pytest.raises(ValueError, match="KERAS_CVT_DOWNLOAD_DEADLINE_S"):
        downloads.download(entry, progress=False)


_KILLED_DOWNLOAD = """
from keras_cvt import downloads, pretrained
downloads.download(pretrained.Pretrained("cvt13", "blob", "test/blob", "0" * 40, None, 224, "none", 0.0), progress=False)
"""


def test_download_after_a_killed_one_succeeds(fake_hub, tmp_path):
    # A process killed mid-download leaves its partial file (huggingface_hub names each
    # process's own); the next download is not disturbed by it and gives the verified bytes.
    data = np.random.RandomState(2).bytes(200_000)
    entry = _blob_entry()
    served_file = fake_hub.add(entry.repo, entry.revision, data, trickle=0.05)
    environment = {**os.environ, "HF_HUB_CACHE": downloads.hub_cache_dir()}
    child = subprocess.Popen([sys.executable, "-c", _KILLED_DOWNLOAD], env=environment, cwd=ROOT)
    try:
        for _ in range(600):
            if fake_hub.get_requests("/cdn/"):
                break
            assert child.poll() is None, "the download ended before it could be killed"
            threading.Event().wait(0.05)
        else:
            raise AssertionError("the download never started")
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    served_file.trickle = 0.0
    assert _download(entry) == (data, hashlib.sha256(data).hexdigest())


def test_progress_off_a_terminal_is_a_few_lines_ending_at_100(fake_hub, capfd):
    data = np.random.RandomState(3).bytes(1_000_000)
    entry = _blob_entry()
    fake_hub.add(entry.repo, entry.revision, data)
    downloads.download(entry, progress=True)
    err = capfd.readouterr().err
    lines = [line for line in err.split("\n") if line.strip()]
    assert lines and "\r" not in err
    # Named by the file, not by the URL it came from.
    assert all(line.startswith("tf_model.h5: ") for line in lines), lines
    assert "100%" in lines[-1]
    assert len(lines) <= 12


def test_endpoint_and_offline_settings(monkeypatch):
    entry = entry_of(*PINNED)
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.example/")
    assert downloads.url_for(entry) == f"https://mirror.example/microsoft/cvt-13/resolve/{entry.revision}/tf_model.h5"
    monkeypatch.delenv("HF_ENDPOINT")
    assert downloads.url_for(entry).startswith("https://huggingface.co/microsoft/cvt-13/resolve/")
    for value, expected in (("1", True), ("true", True), ("Yes", True), ("0", False), ("", False)):
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
        assert downloads.offline() is expected


# --- the table and the arguments ---


def test_every_name_maps_to_a_file_at_a_revision():
    assert len(pretrained.PRETRAINED) == 7
    for p in pretrained.PRETRAINED:
        assert re.fullmatch(r"microsoft/cvt-[\w-]+", p.repo)
        assert p.filename == "tf_model.h5"
        assert p.revision == "main" or re.fullmatch(r"[0-9a-f]{40}", p.revision), p
        assert p.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", p.sha256), p
        assert p.resolution == (384 if p.name.endswith("-384") else 224)
        assert pretrained.lookup(p.variant, p.name) is p
        assert cache.cached_path(p, "f" * 40).endswith(f"{p.variant}_{p.name}_ffffffffffff.weights.h5")
    assert len({cache.cached_path(p, "f" * 40) for p in pretrained.PRETRAINED}) == 7
    assert pretrained.lookup("cvtw24", "imagenet").name == "imagenet22k-384"


def test_cache_lives_under_keras_home(tmp_path):
    assert cache.cache_dir() == str(tmp_path / "keras" / "models" / "keras_cvt")


def test_unknown_name_for_the_variant_lists_the_valid_ones(fake_hub):
    with pytest.raises(ValueError, match=r"imagenet-384.*\['imagenet', 'imagenet22k-384'\]"):
        CvTW24(weights="imagenet-384")
    with pytest.raises(ValueError, match="imagenet22k-384"):
        CvT13(weights="imagenet-1k")
    assert fake_hub.requests == []


def test_generic_builder_takes_no_names(fake_hub):
    with pytest.raises(ValueError, match="CvT13, CvT21 and CvTW24"):
        CvT((1, 2, 10), (64, 192, 384), (1, 3, 6), weights="imagenet")
    assert fake_hub.requests == []


def test_pretrained_name_refuses_other_classes_and_channels(fake_hub):
    with pytest.raises(ValueError, match="classes=10"):
        CvT13(weights="imagenet", classes=10)
    with pytest.raises(ValueError, match="3 channels"):
        CvT13(weights="imagenet", include_preprocessing=False, input_shape=(224, 224, 1))
    assert fake_hub.requests == []


def test_available_weights_lists_the_seven_checkpoints():
    listed = keras_cvt.available_weights()
    assert len(listed) == 7
    assert {(w["variant"], w["weights"]) for w in listed} == {(p.variant, p.name) for p in pretrained.PRETRAINED}
    for w in listed:
        assert w["resolution"] in (224, 384)
        assert 80.0 < w["top1"] < 90.0
    assert [w["weights"] for w in keras_cvt.available_weights("cvtw24")] == ["imagenet22k-384"]

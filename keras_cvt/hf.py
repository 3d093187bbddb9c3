"""Any CvT on the HuggingFace hub by name: `hf://owner/repo[@revision]`.

A transformers `CvtForImageClassification` (or `CvtModel`) repo: its `config.json` gives the
architecture and the labels (`id2label`), its weights come from `model.safetensors`, else
`pytorch_model.bin` (read with `torch.load(weights_only=True)`), else `tf_model.h5`, converted
once into the pretrained cache. `keras_cvt.CvT13(weights="hf://microsoft/cvt-13")` takes the
published variants' repos; `keras_cvt.from_hf("hf://...")` any architecture CvT can express.
"""

import dataclasses
import re

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from keras_cvt import architectures, cache, declared, downloads, hf_config

PREFIX = "hf://"
# In order of preference: safetensors needs no PyTorch and cannot hold code.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "tf_model.h5")
_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# A revision is a commit (40 hex digits) or a branch or tag name as git allows it
# (`git check-ref-format`): slash-separated parts without control characters, spaces, `~^:?*[\`
# or `@{`, none empty, starting with "." or ending with ".lock", the whole not ending in ".".
_REF_PART = re.compile(r"(?!\.)[^\x00-\x20\x7f\s]+")
_REF_FORBIDDEN = re.compile(r"[\\~^:?*\[\x7f]|@\{|\.\.")
# The hub's own limit on a branch name is 256 bytes; a tag's the same.
MAX_REVISION = 256


@dataclasses.dataclass(frozen=True)
class HubFile:
    """One file of a hub repo, in the form `keras_cvt.downloads` and `keras_cvt.cache` take."""

    repo: str
    revision: str
    filename: str
    variant: str = "cvt"
    sha256: str | None = None
    resolution: int = architectures.DEFAULT_SIZE

    @property
    def name(self):
        # Unique per repo and file in the cache's names (a repo id cannot hold "--"); the
        # commit is added there.
        return f"hf-{self.repo.replace('/', '--')}-{self.filename.split('.')[0]}"


@dataclasses.dataclass(frozen=True)
class Repo:
    """A repo's config.json read at one commit: the architecture and labels (`model`), and
    the commit its weights are taken at."""

    source: str
    repo: str
    revision: str
    commit: str
    model: hf_config.HubModel


def is_hub_source(weights):
    return isinstance(weights, str) and weights.startswith(PREFIX)


def is_revision(revision):
    """Whether `revision` is a commit hash, or a branch or tag name the hub could have."""
    if not isinstance(revision, str) or not revision or len(revision.encode()) > MAX_REVISION:
        return False
    if downloads.COMMIT.fullmatch(revision):
        return True
    if _REF_FORBIDDEN.search(revision) or revision.endswith(".") or revision == "@":
        return False
    return all(_REF_PART.fullmatch(part) and not part.endswith(".lock") for part in revision.split("/"))


def parse(source):
    """(repo, revision) of `hf://owner/repo[@revision]`, or ValueError naming the form.

    Checked before any request: the revision reaches huggingface_hub's cache as a file name
    (`refs/<revision>`), so an absolute path or `..` there would write outside it.
    """
    if not is_hub_source(source):
        raise ValueError(f"a hub repo is named hf://owner/name or hf://owner/name@revision, got {source!r}")
    repo, at, revision = source[len(PREFIX) :].partition("@")
    try:
        validate_repo_id(repo)
    except HFValidationError:
        repo = ""
    if not _REPO.fullmatch(repo) or (at and not is_revision(revision)):
        raise ValueError(
            f"`weights`={source[:300]!r} is not a hub repo: expected hf://owner/name or "
            "hf://owner/name@revision (a 40-digit commit, or a branch or tag name as git allows: "
            f"no space, '..', '~^:?*[\\', '@{{', leading '/' or '.', at most {MAX_REVISION} bytes)"
        )
    return repo, revision or "main"


def read_repo(source, progress=True):
    """The `Repo` that `source` names: config.json at the commit its revision is now (offline:
    the commit its weights were last converted at here), verified and read."""
    repo, revision = parse(source)
    entry = HubFile(repo, revision, "config.json")
    at = None
    if downloads.COMMIT.fullmatch(revision):
        at = revision
    elif downloads.offline():
        for filename in WEIGHT_FILES:
            at = at or cache.last_commit(HubFile(repo, revision, filename), any_variant=True)
    else:
        at = downloads.remote(entry)
    try:
        path, _, commit = downloads.download(entry, at, progress=progress)
    except downloads.OfflineError as error:
        if at is None:
            raise
        raise downloads.OfflineError(
            f"{source}: its weights were converted here (commit {at[:12]}, in {cache.cache_dir()}), "
            f"but config.json, which gives the architecture and labels, is missing: {error}"
        ) from error
    name = f"config.json of {source}"
    return Repo(source, repo, revision, commit, hf_config.read(declared.read_json(path, name), source=name))


def read_config(source, progress=True):
    """The `keras_cvt.hf_config.HubModel` that the repo's `config.json` describes."""
    return read_repo(source, progress).model


def labels(source):
    """The class names of the repo's classifier (`id2label`, in class order), or None.

    What the serving export takes: `keras_cvt.export_for_serving(model, ..., labels=labels(source))`.
    """
    return None if (model := read_config(source)).labels is None else list(model.labels)


def fetch_weights(repo, progress=True):
    """The converted `.weights.h5` of a `Repo`'s weights (the first of `WEIGHT_FILES` it has),
    at the commit its config.json was read at."""
    variant = repo.model.variant or "cvt"
    # What the tensors must fit, checked by the converter before it builds anything.
    classes = {} if repo.model.classes is None else {"classes": repo.model.classes}
    declared_config = {**repo.model.config, **classes}
    first_error = None
    for filename in WEIGHT_FILES:
        entry = HubFile(repo.repo, repo.revision, filename, variant=variant)
        try:
            return cache.fetch(entry, progress=progress, commit=repo.commit, config=declared_config)
        except (downloads.NotFoundError, downloads.OfflineError) as error:
            first_error = first_error or error
    raise type(first_error)(
        f"{repo.source} has none of {', '.join(WEIGHT_FILES)} that keras_cvt could use; the first: {first_error}"
    ) from first_error

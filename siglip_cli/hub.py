"""Real weights from the Hugging Face hub: only what the tool needs, sha256-verified, resumable.

Everything goes through huggingface_hub (its cache, HF_HOME, HF_TOKEN, HF_HUB_OFFLINE and
HF_ENDPOINT behave as everywhere in that ecosystem). huggingface_hub accepts a corrupted body of the
right size without complaint, so every downloaded file is hashed and compared with the hub's record:
the model info's files metadata, else what huggingface_hub recorded while downloading (the tree
listing it caches per commit, then the ETag it names the blob after). A mirror may send none of these;
such a file is named as NOT verified (a warning, or an error under --verify), never passed as verified.
"""

from __future__ import annotations

import contextlib
import errno
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .checkpoint import (MODEL_FILES, NEEDED_FILES, OPEN_CLIP_CONFIG_NAME, OPEN_CLIP_FILES, OPEN_CLIP_WEIGHTS_NAME,
                         PICKLE_SUFFIXES, TOKENIZER_FILES, WEIGHTS_INDEX_NAME, WEIGHTS_NAME, ModelSource,
                         checkpoint_kind, is_full_checkpoint, read_config)
from .config import DEFAULT_MODEL_ID
from .errors import (ChecksumError, CheckpointError, HubError, HubUnreachableError, ModelNotFoundError,  # noqa: F401
                     SiglipWarning)
from .bars import rich_progress
from .hashes import _download_metadata, _is_hash, _recorded_hashes, verify_files


@dataclass
class Downloaded:
    """What download_weights / verify_weights report."""

    repo_id: str
    revision: str  # the commit
    path: Path
    files: dict[str, int] = field(default_factory=dict)  # name -> bytes
    full_checkpoint: bool = False  # the weights also hold the text tower
    verified: tuple[str, ...] = ()  # files whose bytes matched a hash the hub sent
    unverified: tuple[str, ...] = ()  # files no source had a hash for: not checked (a warning was issued)

    @property
    def size(self) -> int:
        return sum(self.files.values())


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


def offline_mode(flag: bool = False) -> bool:
    return flag or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def download_command(repo_id: str, revision: str | None) -> str:
    return f"siglip download-weights {repo_id}" + (f" --revision {revision}" if revision else "")


@contextlib.contextmanager
def hub_errors(repo_id: str, revision: str | None, target: Path | None = None) -> Iterator[None]:
    """huggingface_hub's and the network's exceptions -> one-line errors naming the next step."""
    import httpx2
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError,
                                        LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError,
                                        RevisionNotFoundError, RevisionResolutionError)

    from huggingface_hub import constants

    rerun = download_command(repo_id, revision)
    try:
        yield
    except GatedRepoError:
        raise HubError(f"model {repo_id} is gated: accept its terms at {constants.ENDPOINT}/{repo_id}, then log "
                       "in with `hf auth login` (or set HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise ModelNotFoundError(f"model {repo_id} not found on the Hugging Face hub: check the id (see "
                                 "`siglip models`); for a private repository log in with `hf auth login` "
                                 "(or set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise HubError(f"revision {revision!r} not found in {repo_id}: use a branch, tag or commit that exists "
                       "(default: main)") from None
    except (OfflineModeIsEnabled, LocalEntryNotFoundError, RevisionResolutionError,
            httpx2.ConnectError, httpx2.ConnectTimeout) as e:
        # RevisionResolutionError: the hub could not be reached (or offline mode) and no ref was cached.
        if offline_mode():
            raise HubUnreachableError(f"model {repo_id} is not in the cache and HF_HUB_OFFLINE=1 forbids "
                                      f"downloading: unset it and run `{rerun}`") from None
        raise HubUnreachableError(f"cannot reach the Hugging Face hub at {constants.ENDPOINT} ({_root_cause(e)}): "
                                  f"check the network, then run `{rerun}`") from None
    except EntryNotFoundError as e:
        raise HubError(f"{repo_id}: a file listed by the hub is missing ({_first_line(e)}): try again later") \
            from None
    except HfHubHTTPError as e:
        status = e.response.status_code if getattr(e, "response", None) is not None else "an error"
        if status in (401, 403):
            raise HubError(f"access to {repo_id} was refused ({status}): log in with `hf auth login` (or set "
                           "HF_TOKEN) with an account that can read it") from None
        raise HubError(f"the Hugging Face hub answered {status} for {repo_id} ({_first_line(e)}): run `{rerun}` "
                       "again later") from None
    except httpx2.TransportError as e:
        raise HubError(f"download of {repo_id} was cut off ({_first_line(e)}): run `{rerun}` again; a partial "
                       "file is never used") from None
    except OSError as e:
        where = target or Path(constants.HF_HUB_CACHE)
        if e.errno == errno.ENOSPC:
            raise HubError(f"disk full while downloading {repo_id} to {where}: free some space or pass "
                           "--cache-dir on a bigger disk, then run the command again") from None
        raise HubError(f"cannot store {repo_id} in {where}: {e.strerror or e}"
                       f"{' (' + str(e.filename) + ')' if e.filename else ''}: pass a writable --cache-dir or "
                       "--local-dir") from None


def _root_cause(e: BaseException) -> str:
    """The innermost exception of a chain, e.g. 'ConnectError: [Errno 111] Connection refused'."""
    seen = set()
    while (e.__cause__ or e.__context__) is not None and id(e) not in seen:
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return f"{type(e).__name__}: {_first_line(e)}"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def select_files(repo_id: str, names: list[str]) -> list[str]:
    """The files the tool downloads from a repository listing; refuses repositories without safetensors."""
    import fnmatch

    wanted = sorted(n for n in names if any(fnmatch.fnmatch(n, p) for p in NEEDED_FILES))
    if OPEN_CLIP_WEIGHTS_NAME in wanted and OPEN_CLIP_CONFIG_NAME in wanted:  # an open_clip repository
        return [n for n in wanted if n not in MODEL_FILES or n in OPEN_CLIP_FILES]
    wanted = [n for n in wanted if n not in OPEN_CLIP_FILES]
    if WEIGHTS_NAME not in wanted and WEIGHTS_INDEX_NAME not in wanted:
        pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
        other = f" (only {', '.join(pickles)})" if pickles else ""
        raise CheckpointError(f"{repo_id} has no safetensors weights{other}: siglip never unpickles weights; "
                              f"choose a repository with {WEIGHTS_NAME} or {OPEN_CLIP_WEIGHTS_NAME} (see `siglip "
                              "models --layouts`)")
    if "config.json" not in wanted:
        raise CheckpointError(f"{repo_id} has no config.json: not a Hugging Face (transformers or timm) SigLIP "
                              "checkpoint")
    return wanted


def download_weights(repo_id: str, revision: str | None = None, *, cache_dir: Path | None = None,
                     local_dir: Path | None = None, progress: bool = True, note=None,
                     model_class: type | None = None) -> Downloaded:
    """Download what the tool needs of a SigLIP repository and verify it; with model_class, also check that
    its weights fit that model (names and shapes, from the headers).

    note(message) is called with remarks for the user (e.g. that the text tower comes along).
    """
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    if offline_mode():
        try:  # nothing to download: report (and re-check) the copy already here
            return verify_weights(repo_id, revision, cache_dir=cache_dir, local_dir=local_dir, require_hashes=False,
                                  model_class=model_class)
        except ModelNotFoundError:
            raise HubUnreachableError(f"model {repo_id} is not in the cache and HF_HUB_OFFLINE=1 forbids "
                                      f"downloading: unset it and run `{download_command(repo_id, revision)}`") \
                from None
    target = local_dir or cache_dir
    with hub_errors(repo_id, revision, target):
        api = HfApi()
        # Resolved once (and recorded in the cache's refs/), so every file comes from the same commit.
        resolved = api.resolve_revision(repo_id, revision=revision, cache_dir=cache_dir)
        commit = resolved.resolved
        info = api.model_info(repo_id, revision=commit, files_metadata=True)
        siblings = {s.rfilename: s for s in info.siblings or []}
        files = select_files(repo_id, list(siblings))
        config_name = OPEN_CLIP_CONFIG_NAME if OPEN_CLIP_CONFIG_NAME in files else "config.json"
        config_path = Path(hf_hub_download(repo_id, config_name, revision=resolved, cache_dir=cache_dir,
                                           local_dir=local_dir))
        check_config(config_path.parent)  # an unsupported architecture is refused before the weights come
        full = is_full_checkpoint(config_path.parent)
        if not full:  # a vision-only checkpoint has no use for a tokenizer
            files = [f for f in files if f not in TOKENIZER_FILES]
        if full and note is not None:
            weights = sum(siblings[f].size or 0 for f in files if f.endswith(".safetensors"))
            size = f" ({human_size(weights)})" if weights else ""  # a mirror may send no sizes
            note(f"{repo_id} is a full SigLIP checkpoint: its weights{size} hold the image and the text "
                 "tower, and it comes with its tokenizer (for classify, search and embed-text)")
        with rich_progress(progress) as bar_class:
            folder = Path(snapshot_download(repo_id, revision=resolved, cache_dir=cache_dir, local_dir=local_dir,
                                            allow_patterns=files, tqdm_class=bar_class))
    # The model info's hashes first; a mirror may leave them out, so then what huggingface_hub recorded.
    recorded = _recorded_hashes(folder, files, local_dir)
    expected = {}
    for name in files:
        s = siblings[name]
        sent = s.lfs.sha256 if s.lfs is not None else s.blob_id
        if want := sent if _is_hash(sent) else recorded.get(name):
            expected[name] = want
    verify_files(repo_id, folder, expected)
    _check(folder, model_class)
    unverified = tuple(f for f in files if f not in expected)
    if unverified:
        from huggingface_hub import constants

        _warn_unverified(repo_id, unverified, f"the hub at {constants.ENDPOINT} sent no hash for {{them}} (no "
                         "files metadata, tree hash or hash ETag)")
    return Downloaded(repo_id, commit, folder, {f: (folder / f).stat().st_size for f in files}, full,
                      tuple(sorted(expected)), unverified)


def check_config(folder: Path) -> None:
    """The config file of a transformers, timm or open_clip checkpoint, checked without its weights."""
    kind = checkpoint_kind(folder)
    if kind in ("timm", "open_clip"):
        from .timm_layout import read_settings

        read_settings(kind, folder)
    else:
        read_config(folder)


def _warn_unverified(repo_id: str, names: tuple[str, ...], reason: str) -> None:
    """One warning naming the files no hash was compared for; `reason` ends with "for {them}"."""
    reason = reason.format(them="it" if len(names) == 1 else "them")
    warnings.warn(f"{repo_id}: {', '.join(names)} NOT verified (a corrupted download would go unnoticed): "
                  f"{reason}; compare the sha256 with the model's page, or download from a hub that sends hashes",
                  SiglipWarning, stacklevel=3)


def _cached_folder(repo_id: str, revision: str | None, cache_dir: Path | None, local_dir: Path | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    if local_dir is not None:
        if not any((Path(local_dir) / name).is_file() for name in ("config.json", OPEN_CLIP_CONFIG_NAME)):
            raise ModelNotFoundError(f"{local_dir} holds no downloaded checkpoint: run "
                                     f"`{download_command(repo_id, revision)} --local-dir {local_dir}`")
        return Path(local_dir)
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True,
                                      allow_patterns=MODEL_FILES))
    except (LocalEntryNotFoundError, FileNotFoundError):
        raise ModelNotFoundError(f"model {repo_id}{'@' + revision if revision else ''} is not in the Hugging Face "
                                 f"cache: run `{download_command(repo_id, revision)}`") from None


def _check(folder: Path, model_class: type | None) -> None:
    """The weights' names and shapes against the model class, from config.json and the headers alone."""
    if model_class is not None:
        from .weights import check_checkpoint

        check_checkpoint(folder, model_class)


def verify_weights(repo_id: str, revision: str | None = None, *, cache_dir: Path | None = None,
                   local_dir: Path | None = None, require_hashes: bool = True,
                   model_class: type | None = None) -> Downloaded:
    """--verify: re-hash a downloaded model against the hub's recorded hashes and re-check its headers.

    A file with no recorded hash is a ChecksumError; with require_hashes=False (a plain download-weights
    offline) it is checked for nothing but its headers, and named in a warning and in `unverified`.
    """
    folder = _cached_folder(repo_id, revision, cache_dir, local_dir)
    names = sorted(str(p.relative_to(folder)) for p in folder.iterdir() if p.is_file())
    files = select_files(repo_id, names)
    hashes = _recorded_hashes(folder, files, local_dir)
    unrecorded = tuple(f for f in files if f not in hashes)
    if unrecorded and require_hashes:
        them = "it" if len(unrecorded) == 1 else "them"
        raise ChecksumError(f"{repo_id}: {', '.join(unrecorded)} NOT verified: no hash was recorded for {them} "
                            f"when downloaded: run `{download_command(repo_id, revision)}` against a hub that "
                            "sends hashes, then verify again")
    verify_files(repo_id, folder, hashes)
    _check(folder, model_class)
    if unrecorded:
        _warn_unverified(repo_id, unrecorded, "no hash was recorded for {them} when downloaded")
    commit = folder.name if local_dir is None else _download_metadata(local_dir, files[0])[0]
    return Downloaded(repo_id, commit, folder, {n: (folder / n).stat().st_size for n in names},
                      is_full_checkpoint(folder), tuple(sorted(hashes)), unrecorded)


def ensure_model(repo_id: str, revision: str | None, *, offline: bool = False, progress: bool = True,
                 note=None, cache_dir: Path | None = None) -> ModelSource:
    """A hub model from the cache, downloading it first when it is missing and downloading is allowed."""
    try:
        folder = _cached_folder(repo_id, revision, cache_dir, None)
        return ModelSource(path=folder, name=repo_id, revision=folder.name)
    except ModelNotFoundError:
        if offline_mode(offline):
            raise ModelNotFoundError(
                f"model {repo_id}{'@' + revision if revision else ''} is not in the Hugging Face cache and "
                f"downloads are off ({'--offline' if offline else 'HF_HUB_OFFLINE=1'}): run "
                f"`{download_command(repo_id, revision)}` first, or use --random-init for an untrained model"
            ) from None
    if note is not None:
        note(f"{repo_id} is not in the cache: downloading it")
    try:
        done = download_weights(repo_id, revision, cache_dir=cache_dir, progress=progress, note=note)
    except HubUnreachableError as e:
        raise HubUnreachableError(f"{e}, or use --random-init for an untrained model") from None
    return ModelSource(path=done.path, name=repo_id, revision=done.revision)


def config_folder(spec: str, *, offline: bool = False, cache_dir: Path | None = None) -> Path:
    """A folder holding the model's config.json: a local directory as it is, a hub model's from the cache,
    or just that file downloaded (inspect-shapes needs no weights)."""
    from huggingface_hub import hf_hub_download

    folder = _local_folder(spec)
    if folder is not None:
        return folder
    repo_id, revision = parse_model_spec(spec)
    try:
        return _cached_folder(repo_id, revision, cache_dir, None)
    except ModelNotFoundError:
        if offline_mode(offline):
            raise
    with hub_errors(repo_id, revision, cache_dir):
        return Path(hf_hub_download(repo_id, "config.json", revision=revision, cache_dir=cache_dir)).parent


def parse_model_spec(spec: str, revision: str | None = None) -> tuple[str, str | None]:
    """'org/name@rev' -> ('org/name', 'rev'), the id checked as the hub checks it."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    repo_id, sep, rev = spec.partition("@")
    if sep and not rev:
        raise ModelNotFoundError(f"model {spec!r}: nothing after '@': give a branch, tag or commit, or drop the '@'")
    if sep and revision and rev != revision:
        raise ModelNotFoundError(f"model {spec!r} and --revision {revision!r} disagree: give the revision once")
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ModelNotFoundError(f"model {spec!r}: no such directory, and not a Hugging Face model id "
                                 "(like google/siglip-base-patch16-224)") from None
    return repo_id, (revision or (rev if sep else None))


def _local_folder(spec: str) -> Path | None:
    """The checkpoint directory (or big_vision .npz) a spec names, None for a hub id; an error for anything else."""
    path = Path(spec).expanduser()
    if path.is_dir() or (path.suffix.lower() == ".npz" and path.is_file()):  # big_vision's one-file checkpoints
        return path
    if path.exists():
        raise ModelNotFoundError(f"model {spec!r} is a file: --model takes a checkpoint directory, a big_vision "
                                 ".npz file or a hub id")
    if spec.startswith((".", "/", "~")) or "\\" in spec:
        raise ModelNotFoundError(f"model {spec!r}: no such directory, and not a Hugging Face model id "
                                 "(like google/siglip-base-patch16-224)")
    return None


def resolve_model(spec: str | Path | None, revision: str | None = None, *, offline: bool = False,
                  progress: bool = True, note=None, cache_dir: Path | None = None) -> ModelSource:
    """A model name -> its checkpoint on this machine: a local directory as it is, or a hub id (optionally
    id@revision) from the Hugging Face cache, downloaded first when missing unless offline (or
    HF_HUB_OFFLINE=1), in which case the error names the command to run. The one place names are resolved.
    """
    if spec is not None and not str(spec).strip():
        raise ModelNotFoundError("--model is empty: give a checkpoint directory or a hub id")
    spec = str(spec) if spec is not None else DEFAULT_MODEL_ID
    folder = _local_folder(spec)
    if folder is not None:  # recorded by its absolute path: search finds it again from any directory
        return ModelSource(path=folder, name=os.path.abspath(folder))
    repo_id, revision = parse_model_spec(spec, revision)
    return ensure_model(repo_id, revision, offline=offline, progress=progress, note=note, cache_dir=cache_dir)

"""Fetching model files from the Hugging Face hub, through its cache (HF_HUB_OFFLINE is honoured)."""

from __future__ import annotations

from pathlib import Path

from mergesmith.checkpoints.names import CONFIG, DONOR_FILES
from mergesmith.checkpoints.reference import ModelReference
from mergesmith.errors import CheckpointError

# Everything but the weights; weight files are fetched one by one, only those the merge reads.
METADATA_PATTERNS = [CONFIG, "*.index.json", *DONOR_FILES]


def fetch_metadata(ref: ModelReference) -> Path:
    """Download (or find in the cache) config, index, tokenizer and generation files; return the folder."""
    from huggingface_hub import snapshot_download

    assert ref.repo_id is not None  # only hub references reach here
    try:
        return Path(snapshot_download(ref.repo_id, revision=ref.revision, allow_patterns=METADATA_PATTERNS))
    except Exception as err:  # huggingface_hub raises many types; all mean "cannot get this model"
        raise _hub_error(ref, err) from err


def fetch_file(ref: ModelReference, filename: str) -> Path | None:
    """Download one file of the model, or None when the repository has no such file."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    assert ref.repo_id is not None  # only hub references reach here
    try:
        return Path(hf_hub_download(ref.repo_id, filename, revision=ref.revision))
    except EntryNotFoundError:
        return None
    except LocalEntryNotFoundError as err:
        # Offline and not in the cache: the file may exist online, or not at all.
        if _is_offline():
            return None
        raise _hub_error(ref, err) from err
    except Exception as err:
        raise _hub_error(ref, err) from err


def _is_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _hub_error(ref: ModelReference, err: Exception) -> CheckpointError:
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(err, RevisionNotFoundError):
        return CheckpointError(f"model {ref.text!r}: revision {ref.revision!r} not found on the hub")
    if isinstance(err, RepositoryNotFoundError):
        return CheckpointError(
            f"model {ref.text!r}: no such repository on the hub (or it is private)",
            hint="check the id; for a gated or private model run `hf auth login` first",
        )
    if isinstance(err, LocalEntryNotFoundError) or _is_offline():
        return CheckpointError(
            f"model {ref.text!r}: not in the local hub cache, and the hub cannot be reached",
            hint=f"download it first, or map it to a folder with --model-path {ref.repo_id}=DIR",
        )
    return CheckpointError(f"model {ref.text!r}: cannot fetch from the hub ({type(err).__name__}: {err})")

"""Models named by their Hugging Face Hub ID (`org/name`, `org/name@revision`): a snapshot through huggingface_hub,
downloaded when online and read from the local Hugging Face cache when offline (HF_HUB_OFFLINE=1)."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

from ..errors import TuneforgeError

# A repository ID as the Hub spells it: `name` (an old canonical model such as gpt2) or `org/name`, then an optional
# `@revision` (branch, tag or commit; tags and branches may hold slashes).
HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*(?:/[A-Za-z0-9][\w.-]*)?)(?:@(?P<revision>[\w./-]+))?$")

# What a model folder needs, and nothing that would be unpickled (no .bin, .pt or .ckpt: safetensors only).
MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja", "*.py"]


def split_hub_id(name: str) -> Optional[tuple[str, Optional[str]]]:
    """(repo_id, revision) of `name` written as a Hub ID, or None when it cannot be one."""
    match = HUB_ID.match(name)
    if match is None or name.startswith(("./", "../", "~")) or name.endswith(".gguf"):
        return None
    return match["repo"], match["revision"]


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (huggingface_hub reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants
    return Path(constants.HF_HUB_CACHE)


def offline() -> bool:
    """HF_HUB_OFFLINE as it is now (huggingface_hub's is_offline_mode reads the value it had at import)."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_snapshot(name: str, repo_id: str, revision: Optional[str], trust_remote_code: bool = False,
                 key: str = "model.name") -> Path:
    """The local folder of `repo_id` at `revision` (default: main). Online, the files a model needs are fetched
    (or found current in the cache); offline, the cached snapshot is used. Either way a failure names the model,
    why, and how to get it."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HFValidationError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    cache = hub_cache_dir()
    patterns = MODEL_FILES if trust_remote_code else [p for p in MODEL_FILES if p != "*.py"]
    at = f" at revision {revision!r}" if revision else ""
    fetch = f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, cache_dir=str(cache), allow_patterns=patterns,
                                        local_files_only=offline()))
    except GatedRepoError:
        raise TuneforgeError(f"{key} {name!r}: {repo_id} is gated on the Hugging Face Hub; accept its terms on its "
                             "page and log in (`hf auth login`, or set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise TuneforgeError(f"{key} {name!r}: the Hub has no revision {revision!r} of {repo_id}; give a branch, tag "
                             "or commit that exists (model.revision, or org/name@revision)") from None
    except RepositoryNotFoundError:
        raise TuneforgeError(f"{key} {name!r}: no model {repo_id} on the Hugging Face Hub (or it is private: log in "
                             "with `hf auth login`); and it is neither a packaged alias nor a local folder") from None
    except LocalEntryNotFoundError as e:
        if offline():
            raise TuneforgeError(
                f"{key} {name!r}: {repo_id}{at} is not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE=1 keeps "
                f"the Hub out of reach. Fetch it once on a machine online (`{fetch}`, into the same cache or "
                "HF_HUB_CACHE), or unset HF_HUB_OFFLINE; or give a packaged alias or a local folder") from None
        raise TuneforgeError(f"{key} {name!r}: the Hugging Face Hub could not be reached and {repo_id}{at} is not in "
                             f"the cache ({cache}): {str(e).splitlines()[0]}. Check the connection, or fetch it "
                             f"where there is one (`{fetch}`)") from None
    except HFValidationError as e:
        raise TuneforgeError(f"{key} {name!r}: not a valid Hub ID ({e}); give org/name, a packaged alias, a local "
                             "folder or a .gguf file") from None
    if not any(folder.glob("*.safetensors")):
        others = sorted(p.name for p in folder.iterdir())
        raise TuneforgeError(
            f"{key} {name!r}: the snapshot of {repo_id}{at} ({folder}) holds no safetensors weights "
            f"(it holds: {', '.join(others) or 'nothing'}). tuneforge loads weights only from safetensors; fetch them "
            f"(`{fetch} --include '*.safetensors' '*.json'`), or convert the model's weights and save them with "
            "save_pretrained(FOLDER, safe_serialization=True)")
    return folder

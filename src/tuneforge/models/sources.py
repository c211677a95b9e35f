"""Every way to name a model, turned into a local Hugging Face folder: a packaged alias, a local folder (or a
finished tuneforge run), a GGUF file (or a folder holding one), or a Hugging Face Hub ID with an optional revision."""
from __future__ import annotations

from pathlib import Path

from ..assets import MODEL_ALIASES, cache_dir
from ..errors import TuneforgeError
from .gguf import find_gguf, gguf_folder
from .hub import hub_snapshot, split_hub_id

OTHER_ALIASES = ("efficientnet-lite0",)  # image models, resolved by models/vision.py


def resolve_model_path(name: str, trust_remote_code: bool = False, key: str = "model.name") -> Path:
    """The local folder `name` stands for, fetched or converted first where it needs to be."""
    if name in MODEL_ALIASES:
        return _local(MODEL_ALIASES[name](), name, key)
    path = Path(name).expanduser()
    if path.exists():
        return _local(path, name, key)
    if name.lower().endswith(".gguf") or name.startswith(("/", "./", "../", "~")):
        raise TuneforgeError(f"{key}: {name!r} does not exist (no such file or folder)")
    hub = split_hub_id(name)
    if hub is not None:
        return hub_snapshot(name, *hub, trust_remote_code=trust_remote_code, key=key)
    raise TuneforgeError(
        f"{key}: {name!r} is neither a packaged model alias ({', '.join(sorted([*MODEL_ALIASES, *OTHER_ALIASES]))}), "
        "a local folder, a .gguf file, nor a Hugging Face Hub ID (org/name, or org/name@revision)")


def _local(path: Path, name: str, key: str) -> Path:
    if path.is_dir() and (path / ".tuneforge-run").exists() and (path / "model" / "config.json").exists():
        return path / "model"  # a finished tuneforge run: its saved model
    if path.is_dir() and (path / ".tuneforge-run").exists() and (path / "adapter").is_dir():
        raise TuneforgeError(f"{key}: {name!r} is a run that saved an adapter, not a whole model; merge it into "
                             f"one first (tuneforge merge {name} --out FOLDER) and name that folder")
    gguf = find_gguf(path, name, key)
    if gguf is not None:
        return gguf_folder(gguf, name, cache_dir() / "models", key)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise TuneforgeError(f"{key}: {name!r} is a folder without config.json (and without a .gguf file); "
                                 "point it at a Hugging Face model folder")
        return path
    raise TuneforgeError(f"{key}: {name!r} is a file, not a model folder; give a Hugging Face model folder or a "
                         ".gguf file")

"""GGUF files as models: dequantized by transformers once into an fp32 Hugging Face folder in tuneforge's cache,
keyed by the file's content, with the tokenizer and chat template that the file carries.

The conversion runs under a file lock, so two processes that start on the same file at once convert it once; the
folder is renamed into place last, so an interrupted conversion never looks complete."""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import TuneforgeError

SOURCE_FILE = "tuneforge-gguf.json"  # beside the converted weights: which file they came from


def find_gguf(path: Path, name: str, key: str = "model.name") -> Path | None:
    """The GGUF file `path` names: the file itself, or the only .gguf in a folder without config.json. None when
    `path` is no GGUF; a folder with several is an error naming them."""
    if path.is_file():
        return path if path.suffix.lower() == ".gguf" else None
    if not path.is_dir() or (path / "config.json").exists():
        return None
    found = sorted(p for p in path.iterdir() if p.suffix.lower() == ".gguf" and p.is_file())
    if len(found) > 1:
        raise TuneforgeError(f"{key} {name!r}: the folder holds {len(found)} GGUF files "
                             f"({', '.join(p.name for p in found)}); name the one to load ({key}: {path / found[0].name})")
    return found[0] if found else None


def content_hash(file: Path, cache: Path) -> str:
    """sha256 of the file's bytes, remembered by (path, size, mtime, inode) so a large file is read once."""
    st = file.stat()
    stamp = hashlib.sha256(f"{file.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}".encode()).hexdigest()[:24]
    memo = cache / "hashes" / stamp
    if memo.exists():
        return memo.read_text().strip()
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    memo.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo.with_suffix(".tmp")
    tmp.write_text(digest.hexdigest())
    os.replace(tmp, memo)
    return digest.hexdigest()


def gguf_folder(file: Path, name: str, cache: Path, key: str = "model.name") -> Path:
    """The Hugging Face folder converted from `file`, converting it first if no process has."""
    cache.mkdir(parents=True, exist_ok=True)
    digest = content_hash(file, cache)
    target = cache / f"gguf-{digest[:16]}"
    if _complete(target):
        return target
    with open(cache / f"gguf-{digest[:16]}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process converting the same file: wait for it, then reuse
        if _complete(target):
            return target
        _convert(file, name, target, digest, key)
    return target


def _complete(folder: Path) -> bool:
    return (folder / SOURCE_FILE).exists()  # written last, after the weights and the tokenizer


def _convert(file: Path, name: str, target: Path, digest: str, key: str) -> None:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    folder, gguf_file = file.parent, file.name
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=gguf_file)
    except (ValueError, OSError, KeyError) as e:
        raise TuneforgeError(f"{key} {name!r}: transformers cannot read this GGUF file ({e}). It dequantizes "
                             "these architectures: " + ", ".join(supported_architectures())) from None
    auto = AutoModelForCausalLM if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES else AutoModel
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
        model = auto.from_pretrained(folder, gguf_file=gguf_file, dtype="float32")
    except (ValueError, OSError, KeyError, NotImplementedError) as e:
        raise TuneforgeError(f"{key} {name!r}: transformers could not convert {file} ({type(e).__name__}: {e})") from None
    # save_pretrained refuses a model still marked as GGUF-quantized; its weights are plain fp32 tensors now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / "model"
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        source = {"gguf": str(file.resolve()), "sha256": digest, "bytes": file.stat().st_size,
                  "model_type": config.model_type, "chat_template": bool(getattr(tokenizer, "chat_template", None))}
        (out / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)  # an interrupted conversion's leftovers
        os.replace(out, target)


def supported_architectures() -> list[str]:
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except ImportError:
        return []
    return sorted(GGUF_SUPPORTED_ARCHITECTURES)


def gguf_source(folder: Path) -> dict | None:
    """What a converted folder came from (None: not a converted GGUF)."""
    try:
        return json.loads((folder / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return None

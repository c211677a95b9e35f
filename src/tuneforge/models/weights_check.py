"""Checks of a model folder that read no weights, run before anything loads (by `validate` and by the loaders, so a
refused folder never leaves a run folder behind).

- its weights: safetensors only (a pickled `pytorch_model.bin` is never opened), read by their headers alone, each file
  named when it is missing, cut short or not safetensors at all;
- whether those weights fit the model its config.json builds: every weight of the pre-trained network present, with
  the shape the config gives it. The model is built on the meta device (no memory), the file's names and shapes come
  from its header: cheap for any size of model. Only the task head (and a pooler) may start from scratch;
- its tokenizer, for text tasks: transformers builds a 5-token vocabulary when the files are missing, and every word
  becomes [UNK];
- custom code (config.json's `auto_map`), which runs only when the recipe allows it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ..errors import TuneforgeError

WEIGHTS_FILE, WEIGHTS_INDEX = "model.safetensors", "model.safetensors.index.json"
PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack", "model.ckpt.index")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model", "sentencepiece.model", "merges.txt", "vocab.model")
IMAGE_PROCESSOR_FILE = "preprocessor_config.json"
CONVERT = ("convert it once where you trust the file (unpickling can run code): load the folder with transformers "
           "(AutoModel.from_pretrained(FOLDER)) and save it back with save_pretrained(FOLDER, safe_serialization=True)")
EXAMPLES = 3


def _examples(items) -> str:
    items = list(items)
    shown = ", ".join(items[:EXAMPLES])
    return shown + (f", ... ({len(items) - EXAMPLES} more)" if len(items) > EXAMPLES else "")


def _config_json(folder: Path, name: str) -> dict:
    file = folder / "config.json"
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TuneforgeError(f"model.name {name!r}: {file} is not readable JSON ({e}); copy the model folder again "
                             "or give one saved by save_pretrained") from None
    if not isinstance(data, dict):
        raise TuneforgeError(f"model.name {name!r}: {file} holds {type(data).__name__}, not a model config "
                             "(a JSON object); give a folder saved by save_pretrained")
    return data


# ---------------------------------------------------------------- weights files and their headers

def weights_files(folder: Path, name: str, who: Optional[str] = None) -> list[Path]:
    """The folder's safetensors files (one, or the shards its index names); refuse a folder without them. `who`: how
    messages name the model (default: the recipe key model.name and `name`)."""
    folder = Path(folder)
    recipe_key = who is None
    who = who or f"model.name {name!r}"
    index = folder / WEIGHTS_INDEX
    if index.exists():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise TuneforgeError(f"{who}: {index} is not a safetensors index (JSON with a weight_map): "
                                 f"{type(e).__name__}: {e}; copy the model folder again") from None
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise TuneforgeError(f"{who}: {index} names {len(shards)} weight shard(s), but {_examples(missing)} "
                                 f"{'is' if len(missing) == 1 else 'are'} not in {folder}; copy the missing shard(s) "
                                 "into the folder")
        return [folder / s for s in shards]
    if (folder / WEIGHTS_FILE).is_file():
        return [folder / WEIGHTS_FILE]
    pickled = [p for p in PICKLED if (folder / p).exists()]
    if pickled:
        raise TuneforgeError(f"{who}: {folder} holds its weights only as {', '.join(pickled)}; tuneforge "
                             f"loads {WEIGHTS_FILE} only and never unpickles a file. To use this model, {CONVERT}")
    others = sorted(p.name for p in folder.glob("*.safetensors"))
    seen = f" (it holds {', '.join(others)}, which transformers does not load as a model's weights)" if others else ""
    scratch = ", or set model.pretrained: false to train this architecture from random" if recipe_key else ""
    raise TuneforgeError(f"{who}: {folder} has a config.json but no weights: no {WEIGHTS_FILE} or "
                         f"{WEIGHTS_INDEX}{seen}. Copy the weights into the folder (model.save_pretrained(FOLDER) "
                         f"writes them){scratch}")


def header_shapes(files: list[Path], name: str, who: Optional[str] = None) -> dict[str, tuple]:
    """Every weight's name and shape from the files' headers; no tensor is read."""
    from safetensors import safe_open

    again = "Copy it again from where the model came from" if who is None else \
        "Copy it again from a backup, or train the run again"
    who = who or f"model.name {name!r}"
    shapes: dict[str, tuple] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    shapes[key] = tuple(f.get_slice(key).get_shape())
        except Exception as e:  # noqa: BLE001 - safetensors' own error type (SafetensorError) and OSError alike
            size = file.stat().st_size if file.exists() else 0
            raise TuneforgeError(
                f"{who}: {file} ({size:,} bytes) is not a readable safetensors file "
                f"({str(e).strip() or type(e).__name__}): it is cut short (an interrupted download or copy) or is "
                f"another kind of file under this name. {again}") from None
    return shapes


# ---------------------------------------------------------------- do the weights fit the config?

def _checkpoint_names(model, shapes: dict) -> tuple[dict[str, tuple], set[str]]:
    """The file's weights under the names `model` gives them (transformers' own renamings: legacy gamma/beta, an
    architecture's conversions, the base-model prefix added or dropped), and the names filled by a converter
    (several weights merged into one: their shapes are not comparable)."""
    expected = model.state_dict()
    prefix = getattr(model, "base_model_prefix", "") or ""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, rename_source_key

        transforms = get_model_conversion_mapping(model)
        converters = [t for t in transforms if isinstance(t, WeightConverter)]
        renamings = [t for t in transforms if not isinstance(t, WeightConverter)]
        rename = lambda key: rename_source_key(key, renamings, converters, prefix, expected)  # noqa: E731
    except Exception:  # noqa: BLE001 - another transformers: the plain prefix rule below
        rename = None
    named, converted = {}, set()
    for key, shape in shapes.items():
        if rename is not None:
            target, pattern = rename(key)
            if pattern is not None:
                converted.add(target)
        elif prefix and key.startswith(prefix + ".") and key not in expected and key[len(prefix) + 1:] in expected:
            target = key[len(prefix) + 1:]
        elif prefix and key not in expected and f"{prefix}.{key}" in expected:
            target = f"{prefix}.{key}"
        else:
            target = key
        named[target] = shape
    return named, converted


def _may_start_new(model, key: str) -> bool:
    """The task head (outside the pre-trained base network) and a pooler may start from scratch; but a model that
    generates (a causal LM) keeps its pre-trained output head, so none of it may."""
    if "pooler" in key.split("."):
        return True
    prefix = getattr(model, "base_model_prefix", "") or ""
    if not prefix or getattr(model, prefix, None) is None or key.startswith(prefix + "."):
        return False
    try:
        return not model.can_generate()
    except Exception:  # noqa: BLE001 - not a transformers model: its head is the task's
        return True


def weights_misfit(model, shapes: dict) -> Optional[dict]:
    """What of the base network the file does not fill (missing, or another shape); None when it fits."""
    import re

    named, converted = _checkpoint_names(model, shapes)
    expected = model.state_dict()
    tied = dict(getattr(model, "all_tied_weights_keys", None) or {})  # target -> source
    ignore = [re.compile(p) for p in (getattr(model, "_keys_to_ignore_on_load_missing", None) or [])]
    params = [n for n, _ in model.named_parameters(remove_duplicate=False)]  # in the model's order: examples
    missing, mismatched = [], []                                              # start from the embeddings
    for key in params:
        if key in named or key in converted:
            continue
        if key in tied and tied[key] in named or any(tied.get(t) == key and t in named for t in tied):
            continue  # tied to a weight the file holds
        if key in tied or any(p.search(key) for p in ignore) or _may_start_new(model, key):
            continue
        missing.append(key)
    quantized = getattr(getattr(model, "config", None), "quantization_config", None) is not None
    for key, tensor in expected.items():
        if key not in named or key in converted or quantized or _may_start_new(model, key):
            continue
        want, shape = tuple(tensor.shape), named[key]
        if want != shape:
            mismatched.append((key, want, shape))
    if not missing and not mismatched:
        return None
    unexpected = sorted(k for k in named if k not in expected and k not in converted)
    return {"missing": missing, "mismatched": mismatched, "unexpected": unexpected,
            "expected": len([k for k in params if not _may_start_new(model, k)])}


def check_weights_fit(model, shapes: dict, name: str, files: list[Path], config_model_type: str = "") -> None:
    """Refuse weights that leave more than the task head to start from random."""
    misfit = weights_misfit(model, shapes)
    if misfit is None:
        return
    where = files[0] if len(files) == 1 else f"the {len(files)} shards in {files[0].parent}"
    folder = files[0].parent
    parts = []
    if misfit["mismatched"]:
        shown = "; ".join(f"{k}: config.json makes {list(w)}, the file holds {list(s)}"
                          for k, w, s in misfit["mismatched"][:EXAMPLES])
        parts.append(f"{len(misfit['mismatched'])} have another shape (e.g. {shown})")
    if misfit["missing"]:
        parts.append(f"{len(misfit['missing'])} are missing from the file (e.g. {_examples(misfit['missing'])})")
    extra = ""
    if misfit["unexpected"]:
        extra = (f"; and the file holds {len(misfit['unexpected'])} weight(s) this model has no place for "
                 f"(e.g. {_examples(misfit['unexpected'])}), as another architecture's weights would")
    kind = f" ({config_model_type!r})" if config_model_type else ""
    raise TuneforgeError(
        f"model.name {name!r}: the weights in {where} do not fit the {type(model).__name__}{kind} that "
        f"{folder / 'config.json'} describes: of its {misfit['expected']} pre-trained weights, {' and '.join(parts)}"
        f"{extra}. They would be trained from random, not fine-tuned. Give the folder the config.json saved with "
        "these weights (save_pretrained writes both), or point model.name at the folder they came from")


def check_saved_weights(folder: Path) -> None:
    """A saved run's (or merged) model folder: its safetensors exist and their headers read."""
    who = f"{folder}: the saved model"
    header_shapes(weights_files(folder, str(folder), who), str(folder), who)


def check_model_weights(model, folder: Path, name: str) -> dict[str, tuple]:
    """Weights files, their headers and their fit to `model` (built from the folder's config, on the meta device)."""
    files = weights_files(folder, name)
    shapes = header_shapes(files, name)
    if model is not None:
        check_weights_fit(model, shapes, name, files, getattr(getattr(model, "config", None), "model_type", "") or "")
    return shapes


# ---------------------------------------------------------------- custom code, tokenizer, image models

def _code_files(auto_map: dict) -> dict[str, list[str]]:
    """module file -> classes, from an auto_map ({"AutoModel": "modeling_x.XModel", "AutoTokenizer": [slow, fast]})."""
    files: dict[str, list[str]] = {}
    for value in auto_map.values():
        for ref in value if isinstance(value, (list, tuple)) else [value]:
            if not isinstance(ref, str) or "." not in ref:
                continue
            ref = ref.split("--", 1)[-1]  # "repo--module.Class": code from another repository
            module, _, cls = ref.rpartition(".")
            files.setdefault(module.replace(".", "/") + ".py", []).append(cls)
    return files


def check_custom_code(folder: Path, name: str, trust_remote_code: bool) -> None:
    """A folder whose config.json (or tokenizer_config.json) names its own Python code in auto_map, for an
    architecture transformers does not have: refused unless model.trust_remote_code is on."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    folder = Path(folder)
    config = _config_json(folder, name)
    auto_map = dict(config.get("auto_map") or {}) if isinstance(config.get("auto_map"), dict) else {}
    tok_file = folder / "tokenizer_config.json"
    if tok_file.exists():
        try:
            tok_map = json.loads(tok_file.read_text()).get("auto_map")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            tok_map = None
        if isinstance(tok_map, dict):
            auto_map.update({k: v for k, v in tok_map.items() if k not in auto_map})
        elif isinstance(tok_map, (list, tuple)):  # older form: [slow, fast]
            auto_map.setdefault("AutoTokenizer", list(tok_map))
    if not auto_map:
        return
    files = _code_files(auto_map)
    shown = "; ".join(f"{f} ({', '.join(c)})" for f, c in files.items())
    absent = [f for f in files if not (folder / f).is_file()]
    if trust_remote_code:
        if absent:
            raise TuneforgeError(f"model.name {name!r}: config.json's auto_map names code that is not in {folder}: "
                                 f"{', '.join(absent)} (models run offline here, so it cannot be fetched); copy those "
                                 "files into the folder")
        return
    if config.get("model_type") in CONFIG_MAPPING_NAMES:
        return  # transformers has this architecture itself and uses its own code
    missing = f" ({', '.join(absent)} not in the folder: copy {'it' if len(absent) == 1 else 'them'} from where " \
        "the model came from)" if absent else ""
    raise TuneforgeError(
        f"model.name {name!r}: {folder} holds a model that needs its own Python code: model_type "
        f"{config.get('model_type')!r} is not an architecture transformers has, and the auto_map of its config names "
        f"the code to run: {shown}{missing}. tuneforge runs such code only when the recipe says so: set "
        "model.trust_remote_code: true if you trust these files (they run as you, with your permissions), or use a "
        "model that transformers supports itself")


def has_tokenizer_files(folder: Path) -> bool:
    folder = Path(folder)
    return any((folder / f).exists() for f in TOKENIZER_FILES) or any(folder.glob("*.model")) or \
        any(folder.glob("*.tiktoken"))


def image_model_type(folder: Path, name: str) -> Optional[str]:
    """The folder's model type when it is an image model (an image processor, no tokenizer); else None."""
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    folder = Path(folder)
    if has_tokenizer_files(folder):
        return None
    config = _config_json(folder, name)
    kind = config.get("model_type") or config.get("tuneforge_architecture")
    if config.get("tuneforge_architecture") or (folder / IMAGE_PROCESSOR_FILE).exists() or \
            kind in IMAGE_PROCESSOR_MAPPING_NAMES:
        return str(kind or "image model")
    return None


def check_text_model(folder: Path, name: str, task_type: str = "") -> None:
    """Before a tokenizer loads: an image model given to a text task is named as such."""
    kind = image_model_type(folder, name)
    if kind is not None:
        task = f"task.type {task_type!r}" if task_type else "this text task"
        raise TuneforgeError(
            f"model.name {name!r}: {folder} is an image model (model_type {kind!r}, with an image processor and no "
            f"tokenizer), and {task} needs a text model with a tokenizer. Give a text model's folder or alias "
            "(e.g. minilm-l6), or train this one with task.type: image-classification on image data")


def expected_tokenizer_files() -> str:
    return ("tokenizer.json, or the vocabulary its tokenizer class reads (vocab.txt for BERT-like models, vocab.json "
            "+ merges.txt for GPT-2/RoBERTa-like ones, a sentencepiece .model), with tokenizer_config.json")


def check_vocabulary(tokenizer, folder: Path, name: str) -> None:
    """Refuse a tokenizer with no ordinary token: what transformers builds when the vocabulary files are missing."""
    try:
        size, special = len(tokenizer), len(set(tokenizer.all_special_ids))
    except Exception:  # noqa: BLE001 - a tokenizer without these: nothing to check
        return
    if size > special:
        return
    found = sorted(p.name for p in Path(folder).iterdir() if p.is_file())
    raise TuneforgeError(
        f"model.name {name!r}: {folder} has no tokenizer vocabulary (the tokenizer transformers built holds only its "
        f"{size} special token(s), so every word would become {getattr(tokenizer, 'unk_token', None) or 'unknown'}). "
        f"Expected {expected_tokenizer_files()}; the folder holds {_examples(found) or 'nothing'}. Save the tokenizer "
        "beside the model: tokenizer.save_pretrained(FOLDER)")


def missing_tokenizer_error(folder: Path, name: str, error: Exception) -> TuneforgeError:
    return TuneforgeError(
        f"model.name {name!r}: {folder} has no tokenizer files (transformers: {str(error).strip().splitlines()[0]}). "
        f"Expected {expected_tokenizer_files()}. Save the tokenizer beside the model: tokenizer.save_pretrained(FOLDER)")

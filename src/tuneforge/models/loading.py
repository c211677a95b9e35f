"""Load a pre-trained encoder with a new task head, and reload a finished run's model."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .sources import resolve_model_path
from ..errors import TuneforgeError
from .weights_check import (check_custom_code, check_saved_weights, check_text_model, check_vocabulary, check_weights_fit,
                            has_tokenizer_files, header_shapes, missing_tokenizer_error, weights_files)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    path: Path
    new_parameters: list[str]  # weights not in the checkpoint: the head trained from scratch
    kept_layers: Optional[list[int]] = None  # model.keep_layers / keep_every: the blocks kept (None: all)
    blocks_before: Optional[int] = None      # and how many the loaded model had


def quiet_transformers():
    # transformers reports newly initialized weights as a warning; tuneforge reports them itself.
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)


def tokenizer_and_config(name: str, trust_remote_code: bool = False, task_type: str = ""):
    """(folder, tokenizer, config) of a text model's alias or folder; an unreadable one is named with the reason, and
    so are a folder that needs custom code the recipe does not allow, an image model, and one without a tokenizer."""
    from transformers import AutoConfig, AutoTokenizer

    quiet_transformers()
    path = resolve_model_path(name, trust_remote_code)
    check_custom_code(path, name, trust_remote_code)
    check_text_model(path, name, task_type)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        if not has_tokenizer_files(path):
            raise missing_tokenizer_error(path, name, e) from None
        raise TuneforgeError(f"model.name {name!r}: could not load the tokenizer from {path}: {e}") from None
    check_vocabulary(tokenizer, path, name)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise TuneforgeError(f"model.name {name!r}: could not load the config from {path}: {e}") from None
    return path, tokenizer, config


def check_weights(auto, name: str, path: Path, config, trust_remote_code: bool = False):
    """Before from_pretrained: the folder's safetensors headers, and their fit to the `auto` model its config builds
    (on the meta device: no memory, no weights read). A model that cannot be built here is left to from_pretrained
    to report."""
    files = weights_files(path, name)
    shapes = header_shapes(files, name)
    try:
        with torch.device("meta"):
            skeleton = auto.from_config(config, trust_remote_code=trust_remote_code)
    except Exception:  # noqa: BLE001 - reported, with the reason, by the loading that follows
        return
    check_weights_fit(skeleton, shapes, name, files, getattr(config, "model_type", "") or "")


def load_for_classification(name: str, num_outputs: int, problem_type: str, id2label: dict[int, str] | None,
                            head_seed: int, trust_remote_code: bool = False, pretrained: bool = True,
                            load_kwargs=None, auto=None, head: str = "sequence-classification") -> LoadedModel:
    """The model with a new head of `num_outputs` (`auto`: its transformers auto class, by default
    AutoModelForSequenceClassification; `head` names it in messages). `load_kwargs(auto_class, config)`:
    from_pretrained keyword arguments (attention kernel, quantization)."""
    from transformers import AutoModelForSequenceClassification

    auto = auto or AutoModelForSequenceClassification
    path, tokenizer, config = tokenizer_and_config(name, trust_remote_code)
    extra = load_kwargs(auto, config) if load_kwargs else {}
    config.num_labels = num_outputs
    config.problem_type = problem_type
    if tokenizer.pad_token is None:
        # Decoders (GPT-2, Llama) often have no pad token: batches need one, and their classification heads find
        # each row's last token by it. The config's own pad id if it has one, else EOS (safe: rows are
        # right-padded and the head reads the last non-pad token).
        configured = getattr(config, "pad_token_id", None)
        if isinstance(configured, int) and 0 <= configured < len(tokenizer):
            tokenizer.pad_token = tokenizer.convert_ids_to_tokens(configured)
        elif tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.pad_token_id is not None:  # batches are padded with the id the head looks for
        config.pad_token_id = tokenizer.pad_token_id
    if id2label:
        config.id2label = {int(i): n for i, n in id2label.items()}
        config.label2id = {n: int(i) for i, n in id2label.items()}
    if pretrained:
        check_weights(auto, name, path, config, trust_remote_code)
    # The head's initialization draws from the global RNG: seed it here, apart from the data order.
    torch.manual_seed(head_seed)
    load = lambda **kw: auto.from_pretrained(  # noqa: E731
        path, config=config, trust_remote_code=trust_remote_code, use_safetensors=True, output_loading_info=True,
        **extra, **kw)
    if not pretrained:  # the same architecture, randomly initialized: what pre-training buys
        model = _from_config(auto, name, config, trust_remote_code, extra, f"has no {head} head in transformers")
        return LoadedModel(model=model, tokenizer=tokenizer, path=path,
                           new_parameters=sorted(n for n, _ in model.named_parameters()))
    try:
        try:
            model, info = load()
        except RuntimeError as e:
            if "size mismatch" not in str(e) and "ignore_mismatched_sizes" not in str(e):
                raise
            # A fine-tuned checkpoint with another label set: its head is replaced by a new one (reported).
            torch.manual_seed(head_seed)
            model, info = load(ignore_mismatched_sizes=True)
    except (OSError, EnvironmentError) as e:
        raise TuneforgeError(f"model.name {name!r}: could not load weights from {path} (safetensors only): {e}") from None
    except (ValueError, ImportError) as e:
        if _attention_failed(extra, e):
            raise _attention_error(name, extra, e) from None
        raise TuneforgeError(f"model.name {name!r}: {type(config).__name__} has no {head} head "
                             f"in transformers: {e}") from None
    mismatched = [k[0] if isinstance(k, (tuple, list)) else k for k in info.get("mismatched_keys", [])]
    new = sorted(set(info.get("missing_keys", [])) | set(mismatched))
    return LoadedModel(model=model, tokenizer=tokenizer, path=path, new_parameters=new)


def load_run_model(model_dir: Path, auto=None):
    """A saved run's model and tokenizer (plain Hugging Face format; `auto`: the transformers auto class, by default
    AutoModelForSequenceClassification)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    auto = auto or AutoModelForSequenceClassification
    quiet_transformers()
    if not (model_dir / "config.json").exists():
        raise TuneforgeError(f"{model_dir}: no saved model here (config.json missing); is this a finished run directory?")
    check_saved_weights(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = auto.from_pretrained(model_dir, use_safetensors=True)
    model.eval()
    return model, tokenizer


def load_for_causal_lm(name: str, seed: int, trust_remote_code: bool = False, pretrained: bool = True,
                       load_kwargs=None) -> LoadedModel:
    """A causal language model and its tokenizer; its own head (tied or not) is kept, nothing is new."""
    from transformers import AutoModelForCausalLM

    path, tokenizer, config = tokenizer_and_config(name, trust_remote_code)
    if tokenizer.pad_token is None:  # batches need a pad id; padded positions never have loss
        tokenizer.pad_token = tokenizer.eos_token
    extra = load_kwargs(AutoModelForCausalLM, config) if load_kwargs else {}
    if pretrained:
        check_weights(AutoModelForCausalLM, name, path, config, trust_remote_code)
    torch.manual_seed(seed)
    if not pretrained:
        model = _from_config(AutoModelForCausalLM, name, config, trust_remote_code, extra,
                             "is not a causal language model in transformers")
        return LoadedModel(model, tokenizer, path, sorted(n for n, _ in model.named_parameters()))
    model, info = _from_pretrained(AutoModelForCausalLM, name, path, config, trust_remote_code,
                                   "is not a causal language model in transformers", extra)
    return LoadedModel(model=model, tokenizer=tokenizer, path=path, new_parameters=sorted(info.get("missing_keys", [])))


def _from_pretrained(auto, name: str, path: Path, config, trust_remote_code: bool, unsupported: str,
                     extra: Optional[dict] = None):
    """(model, loading info) from safetensors; a failure names the model and why."""
    extra = extra or {}
    try:
        return auto.from_pretrained(path, config=config, trust_remote_code=trust_remote_code, use_safetensors=True,
                                    output_loading_info=True, **extra)
    except (OSError, EnvironmentError) as e:
        raise TuneforgeError(f"model.name {name!r}: could not load weights from {path} (safetensors only): {e}") from None
    except (ValueError, ImportError) as e:
        if _attention_failed(extra, e):
            raise _attention_error(name, extra, e) from None
        raise TuneforgeError(f"model.name {name!r}: {type(config).__name__} {unsupported}: {e}") from None


def _from_config(auto, name: str, config, trust_remote_code: bool, extra: dict,
                 unsupported: str = "has no sequence-classification head in transformers"):
    if extra.get("dtype") == "auto":  # a model built from its config has no checkpoint dtype to follow
        extra = {k: v for k, v in extra.items() if k != "dtype"}
    try:
        return auto.from_config(config, trust_remote_code=trust_remote_code, **extra)
    except (ValueError, ImportError) as e:
        if _attention_failed(extra, e):
            raise _attention_error(name, extra, e) from None
        raise TuneforgeError(f"model.name {name!r}: {type(config).__name__} {unsupported}: {e}") from None


def _attention_failed(extra: dict, e: Exception) -> bool:
    text = str(e).lower()
    return "attn_implementation" in extra and ("attn" in text or "attention" in text)


def _attention_error(name: str, extra: dict, e: Exception) -> TuneforgeError:
    from ..errors import RecipeError

    return RecipeError([f"model.attn_implementation: {extra['attn_implementation']!r} cannot run {name!r} here: {e}. "
                        "Use auto (the fastest available), sdpa or eager"])


LOAD_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_kwargs(recipe_model) -> dict:
    """model.dtype as from_pretrained's `dtype`: float32 unless asked (transformers' own default is the checkpoint's
    dtype, often bf16, in which small updates of trained weights are lost)."""
    dtype = getattr(recipe_model, "dtype", "float32")
    return {"dtype": "auto" if dtype == "auto" else LOAD_DTYPES[dtype]}


def load_for_recipe(recipe, task, space, head_seed: int, runtime=None) -> LoadedModel:
    """The recipe's model with `task`'s head for `space` (the task decides which model and head), cut to the blocks
    model.keep_layers / keep_every name. `runtime`: where it will run, for the attention choice `auto` and a
    quantized base's placement."""
    from .attention import attention_kwargs
    from .quantization import quantization_kwargs
    from .truncate import truncate_for_recipe

    def load_kwargs(auto, config) -> dict:
        return {**dtype_kwargs(recipe.model), **attention_kwargs(recipe.model, auto, config, runtime),
                **quantization_kwargs(recipe.model, auto, config, runtime)}
    loaded = task.load_model(recipe, space, head_seed, load_kwargs)
    loaded.kept_layers, loaded.blocks_before = truncate_for_recipe(loaded.model, recipe.model)
    return loaded


def load_causal_run_model(model_dir: Path):
    """A saved causal-LM run's model and tokenizer (plain Hugging Face format)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    if not (model_dir / "config.json").exists():
        raise TuneforgeError(f"{model_dir}: no saved model here (config.json missing); is this a finished run directory?")
    check_saved_weights(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True)
    model.eval()
    return model, tokenizer


def load_for_masked_lm(name: str, seed: int, trust_remote_code: bool = False, load_kwargs=None) -> LoadedModel:
    """An encoder with its masked-LM head, for continued pre-training. A checkpoint saved without one (e.g. a
    sentence-transformers encoder) gets a new head whose output layer is tied to the word embeddings, as BERT's
    is; only its small transform layer and bias start from scratch (they are listed as new)."""
    from transformers import AutoModelForMaskedLM

    path, tokenizer, config = tokenizer_and_config(name, trust_remote_code)
    if tokenizer.mask_token is None:
        raise TuneforgeError(f"model.name {name!r}: its tokenizer has no mask token, so it cannot be trained as a "
                             "masked LM; decoders continue pre-training with task.type causal-lm")
    check_weights(AutoModelForMaskedLM, name, path, config, trust_remote_code)
    torch.manual_seed(seed)
    model, info = _from_pretrained(AutoModelForMaskedLM, name, path, config, trust_remote_code,
                                   "has no masked-LM head in transformers (decoders continue pre-training with "
                                   "task.type causal-lm)", load_kwargs(AutoModelForMaskedLM, config) if load_kwargs else {})
    output, inputs = model.get_output_embeddings(), model.get_input_embeddings()
    if output is not None and output.weight is not inputs.weight and getattr(config, "tie_word_embeddings", True):
        model.tie_weights()
    return LoadedModel(model=model, tokenizer=tokenizer, path=path, new_parameters=sorted(info.get("missing_keys", [])))


def base_weights_missing_from(model, source: Path) -> dict:
    """Weights of the source checkpoint's base network that `model` has no place for (BERT's pooler, under a
    masked-LM head), named as `model`'s base network names them. Saved beside the adapted weights, they let a
    classifier fine-tuned from the adapted model start from the same pooler as one fine-tuned from the source."""
    from safetensors import safe_open
    from transformers import AutoModel

    file = Path(source) / "model.safetensors"
    if not file.exists():
        return {}
    prefix = getattr(model, "base_model_prefix", "")
    with torch.device("meta"):
        base_names = set(AutoModel.from_config(model.config).state_dict())
    have = set(model.state_dict())
    out = {}
    with safe_open(str(file), framework="pt") as f:
        for key in f.keys():
            bare = key[len(prefix) + 1:] if prefix and key.startswith(prefix + ".") else key
            named = f"{prefix}.{bare}" if prefix else bare
            if bare in base_names and named not in have and bare not in have:
                out[named] = f.get_tensor(key)
    return out

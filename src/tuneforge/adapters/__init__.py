"""Parameter-efficient methods: the pre-trained weights stay frozen and a few added weights learn.

LoRA, DoRA, (IA)^3, prefix and prompt tuning come from PEFT and are saved in PEFT's format; bottleneck
adapters are tuneforge's own (PEFT has none). In every method the task head (and what sits above the last
block: pooler, final norm) trains fully and is saved with the adapter.
"""
from __future__ import annotations

import contextlib
import json
import re
import warnings
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from ..engine.checkpoint import atomic_folder
from ..errors import RecipeError, TuneforgeError
from ..methods.param_groups import no_decay_names
from ..models.layers import LayerGroups
from . import bottleneck as bn
from .targets import adaptable, auto_targets, block_roles, head_modules, is_convolutional, matches

MERGEABLE = ("lora", "dora", "ia3")
WEIGHTS_NAME = "adapter_model.safetensors"
_ADAPTER_TAGS = ("lora_", "ia3_", "prompt_encoder", ".bottleneck.")


def is_peft(model: nn.Module) -> bool:
    from peft import PeftModel
    return isinstance(model, PeftModel)


def is_adapter_parameter(name: str) -> bool:
    return any(tag in name for tag in _ADAPTER_TAGS)


def _linear_names(model: nn.Module, groups: LayerGroups) -> list[str]:
    """Block modules an adapter can target: linear layers, and convolutions PEFT handles (see `adaptable`)."""
    return [n for n, m in model.named_modules() if n.startswith(groups.blocks_prefix + ".") and adaptable(m)]


def _user_targets(spec, model, groups, key: str = "target_modules") -> list[str]:
    """Full names of the block modules a user's target_modules selects; an error if none."""
    chosen = getattr(spec, key)
    found = [n for n in _linear_names(model, groups) if matches(n, chosen)]
    if not found:
        examples = _linear_names(model, groups)[:6]
        raise RecipeError([f"method.{key}: {chosen!r} matches no linear layer (or plain convolution) in the model's blocks "
                           f"(names look like {examples}); give name suffixes (e.g. [query, value]) or a regular "
                           "expression matched against the full name"])
    return found


def resolve_targets(spec, model: nn.Module, groups: LayerGroups) -> tuple[object, object]:
    """(target_modules, feedforward_modules) for PEFT: a regular expression over every block (auto), or the
    full names of the block modules a user's suffixes / expression select (so nothing outside the blocks)."""
    if spec.target_modules == "auto" and is_convolutional(model, groups.blocks_prefix):
        # Convolutional blocks have no attention / feed-forward roles: every adaptable layer in them; (IA)^3
        # then scales each one's output.
        targets = _linear_names(model, groups)
        if not targets:
            raise RecipeError([f"method {spec.name}: the model's blocks hold no layer PEFT can adapt (only grouped or "
                               "padded convolutions); use a freezing method"])
        return targets, []
    if spec.target_modules == "auto":
        roles = block_roles(model, groups)
        names, ff = auto_targets(spec.name, roles, spec.placement)
        return roles.regex(names), (roles.regex(ff) if ff else [])
    targets = _user_targets(spec, model, groups)
    feedforward: list[str] = []
    if spec.name == "ia3" and is_convolutional(model, groups.blocks_prefix) and spec.feedforward_modules == "auto":
        pass  # convolutions: output scaling throughout
    elif spec.name == "ia3":
        if spec.feedforward_modules == "auto":
            ffn_out = block_roles(model, groups).regex([block_roles(model, groups).ffn_out])
            feedforward = [n for n in targets if re.fullmatch(ffn_out, n)]
        else:
            feedforward = _user_targets(spec, model, groups, "feedforward_modules")
            outside = sorted(set(feedforward) - set(targets))
            if outside:
                raise RecipeError([f"method.feedforward_modules: {outside[:3]} are not among method.target_modules; "
                                   "feed-forward modules must also be targets"])
    return targets, feedforward


def peft_config(spec, model: nn.Module, groups: LayerGroups, task_type: str | None = "SEQ_CLS"):
    try:
        return _peft_config(spec, model, groups, task_type)
    except ValueError as e:  # PEFT's own checks of the options
        raise RecipeError([f"method ({spec.name}): {e}"]) from None


def _peft_config(spec, model, groups, task_type):
    from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig

    # A new task head trains fully beside the adapter and is saved with it; a language model's head is pre-trained.
    head = [] if generates(model) else head_modules(model, groups)
    # GPT-2's Conv1D stores its weight transposed; PEFT needs telling (it would guess, with a warning).
    transposed = any(type(m).__name__ == "Conv1D" for m in model.modules())
    if spec.name in ("lora", "dora"):
        targets, _ = resolve_targets(spec, model, groups)
        return LoraConfig(task_type=task_type, r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                          target_modules=targets, use_dora=spec.name == "dora", modules_to_save=head or None,
                          fan_in_fan_out=transposed)
    if spec.name == "ia3":
        targets, feedforward = resolve_targets(spec, model, groups)
        return IA3Config(task_type=task_type, target_modules=targets, feedforward_modules=feedforward,
                         modules_to_save=head or None, fan_in_fan_out=transposed)
    if spec.name == "prefix":
        return PrefixTuningConfig(task_type=task_type, num_virtual_tokens=spec.num_virtual_tokens,
                                  prefix_projection=spec.prefix_projection, modules_to_save=head or None)
    if spec.name == "prompt":
        # Soft prompts start as embeddings of sampled vocabulary tokens: random N(0, 1) vectors lie far off
        # the embedding manifold and train slowly (Lester et al. 2021).
        return PromptTuningConfig(task_type=task_type, num_virtual_tokens=spec.num_virtual_tokens,
                                  prompt_tuning_init="SAMPLE_VOCAB", modules_to_save=head or None)
    raise ValueError(spec.name)


def bottleneck_config(spec, model: nn.Module, groups: LayerGroups) -> bn.BottleneckConfig:
    if spec.target_modules == "auto":
        roles = block_roles(model, groups)
        names, _ = auto_targets("bottleneck", roles, spec.placement)
        targets = [f"{groups.blocks_prefix}.{i}.{n}" for i in range(groups.num_blocks) for n in names]
    else:
        targets = _user_targets(spec, model, groups)
    return bn.BottleneckConfig(targets=targets, bottleneck_size=spec.bottleneck_size, non_linearity=spec.non_linearity,
                               dropout=spec.dropout, placement=spec.placement,
                               modules_to_save=[] if generates(model) else head_modules(model, groups),
                               base_model_name_or_path=str(getattr(model.config, "_name_or_path", "")))


def generates(model: nn.Module) -> bool:
    """A causal language model: its head is pre-trained (often tied to the embeddings), not new."""
    can = getattr(model, "can_generate", None)
    return bool(can and can())


def takes_pixels(model: nn.Module) -> bool:
    import inspect
    return "pixel_values" in inspect.signature(model.forward).parameters


def attach_adapter(model: nn.Module, spec, groups: LayerGroups, seed: int, task_type: str | None = "SEQ_CLS") -> nn.Module:
    """Freeze the model and add the adapter; the head stays trainable. Returns the model to train. `task_type`: PEFT's
    task type, the task's to say (None: a plain PeftModel, whose forward passes every input on, e.g. pixel_values)."""
    torch.manual_seed(seed)  # adapter initialization (LoRA's A, prompt sampling), apart from head and data order
    if spec.name != "bottleneck":
        from peft import get_peft_model

        from ..models.quantization import is_quantized, prepare_for_training
        with warnings.catch_warnings():  # PEFT calls a transformers API that v5 deprecates; nothing to act on
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*(gradient|activation)_checkpointing.*")
            if is_quantized(model):  # QLoRA: norms and other unquantized weights in fp32, inputs that carry grads
                model = prepare_for_training(model)
            return get_peft_model(model, peft_config(spec, model, groups, task_type))
    config = bottleneck_config(spec, model, groups)
    for p in model.parameters():
        p.requires_grad_(False)
    bn.inject(model, config)
    _set_bottleneck_trainable(model, config)
    model.bottleneck_config = config
    return model


def _bottleneck_saved_names(model: nn.Module, config: bn.BottleneckConfig) -> list[str]:
    return [n for n, _ in model.named_parameters()
            if ".bottleneck." in n or any(n.startswith(h + ".") for h in config.modules_to_save)]


def _set_bottleneck_trainable(model, config) -> None:
    saved = set(_bottleneck_saved_names(model, config))
    for n, p in model.named_parameters():
        p.requires_grad_(n in saved)


def adapter_param_groups(model: nn.Module, lr: float, head_lr: float | None, weight_decay: float) -> list[dict]:
    """Trainable parameters only: adapter weights at `lr`, head at `head_lr` (default lr). No decay on
    biases, norms, (IA)^3 scales (they start at 1) or DoRA magnitudes."""
    no_decay = no_decay_names(model)
    buckets: dict[str, list] = {"adapter": [], "adapter.no_decay": [], "head": [], "head.no_decay": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        role = "adapter" if is_adapter_parameter(name) else "head"
        plain = name in no_decay or "ia3_" in name or "magnitude" in name
        buckets[role + (".no_decay" if plain else "")].append((name, p))
    out = []
    for key, items in buckets.items():
        if items:
            role = key.split(".")[0]
            out.append({"name": key, "params": [p for _, p in items], "param_names": [n for n, _ in items],
                        "lr": head_lr if role == "head" and head_lr is not None else lr,
                        "weight_decay": 0.0 if key.endswith("no_decay") else weight_decay})
    return out


@contextlib.contextmanager
def disabled(model: nn.Module):
    """Run the pre-trained network without the adapter. LoRA, DoRA, (IA)^3: PEFT's switch, which also puts
    the original head back. Prefix, prompt and bottleneck: the adapter is skipped and the head stays as trained
    (PEFT's own switch for prompt learning fails on models that cannot generate)."""
    if not is_peft(model):
        with bn.disabled(model):
            yield model
    elif model.peft_config[model.active_adapter].is_prompt_learning:
        if "forward" in model.__dict__:  # already disabled by an outer context
            yield model
            return
        model.forward = model.base_model.forward  # an instance attribute shadows PeftModel.forward
        try:
            yield model
        finally:
            del model.forward
    else:
        with model.disable_adapter():
            yield model


def trainable_names(model: nn.Module) -> set[str]:
    """What an adapter run checkpoints: the trainable parameters, and the buffers of the modules that own them
    (a trained head's batch-norm running statistics change with it and must be restored with it)."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    for module_name, module in model.named_modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            prefix = f"{module_name}." if module_name else ""
            names.update(prefix + b for b, _ in module.named_buffers(recurse=False))
    return names


# ---------------------------------------------------------------- save and load

def save_adapter(model: nn.Module, tokenizer, folder: Path, state: dict | None = None) -> int:
    """Write the adapter (and head) into `folder` atomically; returns the weights' size in bytes. `state`: the
    weights gathered from a sharded model (adapter and head at least)."""
    with atomic_folder(folder) as tmp:
        if is_peft(model):
            model.save_pretrained(tmp, safe_serialization=True, **({"state_dict": state} if state is not None else {}))
        else:
            config = model.bottleneck_config
            state = state if state is not None else dict(model.named_parameters())
            save_file({n: state[n].detach().cpu().contiguous() for n in _bottleneck_saved_names(model, config)},
                      str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
            (tmp / bn.CONFIG_NAME).write_text(json.dumps(config.to_json(), indent=1))
        tokenizer.save_pretrained(tmp)
    return (folder / WEIGHTS_NAME).stat().st_size


def adapter_kind(folder: Path) -> str | None:
    """'peft', 'bottleneck', or None when `folder` holds no adapter."""
    if (folder / "adapter_config.json").exists():
        return "peft"
    if (folder / bn.CONFIG_NAME).exists():
        return "bottleneck"
    return None


def read_adapter_method(folder: Path) -> str:
    """The method name of a saved adapter: lora, dora, ia3, prefix, prompt or bottleneck."""
    if adapter_kind(folder) == "bottleneck":
        return "bottleneck"
    config = json.loads((folder / "adapter_config.json").read_text())
    kind = config.get("peft_type", "")
    return {"LORA": "dora" if config.get("use_dora") else "lora", "IA3": "ia3", "PREFIX_TUNING": "prefix",
            "PROMPT_TUNING": "prompt"}.get(kind, kind.lower())


def load_bottleneck_state(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / WEIGHTS_NAME))


def attach_saved_adapter(base: nn.Module, folder: Path, name: str = "default") -> nn.Module:
    """Put a saved adapter on a freshly loaded base model (with a head of the same shape)."""
    kind = adapter_kind(folder)
    if kind == "peft":
        from peft import PeftModel
        with warnings.catch_warnings():  # as in attach_adapter: PEFT asks a question transformers v5 deprecates
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*gradient_checkpointing.*")
            return PeftModel.from_pretrained(base, folder, adapter_name=name)
    if kind == "bottleneck":
        config = bn.BottleneckConfig(**json.loads((folder / bn.CONFIG_NAME).read_text()))
        bn.inject(base, config)
        base.bottleneck_config = config
        load_bottleneck_weights(base, folder)
        for p in base.parameters():
            p.requires_grad_(False)
        return base
    raise TuneforgeError(f"{folder}: no adapter here (neither adapter_config.json nor {bn.CONFIG_NAME})")


def load_bottleneck_weights(model: nn.Module, folder: Path) -> None:
    state = load_bottleneck_state(folder)
    own = dict(model.named_parameters())
    unexpected = sorted(set(state) - set(own))
    missing = sorted(set(_bottleneck_saved_names(model, model.bottleneck_config)) - set(state))
    if unexpected or missing:
        raise TuneforgeError(f"{folder}: the adapter does not fit this model (unexpected {unexpected[:4]}, "
                             f"missing {missing[:4]}); was it trained on another base or with other options?")
    shapes = [n for n, t in state.items() if tuple(t.shape) != tuple(own[n].shape)]
    if shapes:
        raise TuneforgeError(f"{folder}: shapes differ from this model's for {shapes[:4]} (another label set?)")
    with torch.no_grad():
        for n, t in state.items():
            own[n].copy_(t)

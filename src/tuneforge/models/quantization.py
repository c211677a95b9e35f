"""`model.quantization: 4bit | 8bit`: QLoRA's frozen base, quantized by bitsandbytes as transformers loads it
(4-bit NF4 with double quantization and a bf16 compute dtype, or LLM.int8), while an adapter trains in full
precision beside it. The new task head and the pooler stay unquantized: they train.

bitsandbytes runs on CUDA GPUs and, from version 0.45, on the CPU; elsewhere (MPS) a quantized run is refused."""
from __future__ import annotations

import importlib.metadata
import importlib.util

import torch

from ..errors import RecipeError

CPU_SINCE = (0, 45)  # bitsandbytes' first release with CPU kernels


def bitsandbytes_version() -> tuple[int, ...] | None:
    if importlib.util.find_spec("bitsandbytes") is None:
        return None
    try:
        return tuple(int(x) for x in importlib.metadata.version("bitsandbytes").split(".")[:2])
    except (ValueError, importlib.metadata.PackageNotFoundError):
        return (0, 0)


def check_quantization(bits: str, device: torch.device) -> None:
    """A RecipeError naming model.quantization where this machine cannot run it."""
    version = bitsandbytes_version()
    if version is None:
        raise RecipeError([f"model.quantization {bits!r} needs the bitsandbytes package, which is not installed: "
                           "pip install 'tuneforge[quantization]' (or bitsandbytes), or drop model.quantization"])
    if device.type == "cuda" or (device.type == "cpu" and version >= CPU_SINCE):
        return
    where = f"bitsandbytes {'.'.join(map(str, version))} on {device.type}"
    fix = "upgrade bitsandbytes to 0.45 or newer" if device.type == "cpu" else "train on a CUDA GPU or the CPU"
    raise RecipeError([f"model.quantization {bits!r}: {where} has no {bits} kernels; {fix}, or drop model.quantization"])


def quantization_kwargs(recipe_model, auto_class, config, runtime) -> dict:
    """from_pretrained keyword arguments that quantize the base as it loads, placed on the runtime's device."""
    bits = getattr(recipe_model, "quantization", None)
    if bits is None:
        return {}
    device = runtime.device if runtime is not None else torch.device("cpu")
    check_quantization(bits, device)
    _quiet_bitsandbytes()
    from transformers import BitsAndBytesConfig

    keep = trained_head_modules(auto_class, config)
    if bits == "4bit":
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16, llm_int8_skip_modules=keep)
    else:
        q = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=keep)
    return {"quantization_config": q, "device_map": {"": device}}


def trained_head_modules(auto_class, config) -> list[str]:
    """Modules of the head group (pooler, final norm, the new task head, a language model's output layer): they
    train beside the adapter or feed the loss, so they keep full-precision weights."""
    from .layers import find_layer_groups

    with torch.device("meta"):
        skeleton = auto_class.from_config(config)
    params = find_layer_groups(skeleton).params.get("head", [])
    return sorted({name.rsplit(".", 1)[0] for name in params if "." in name})


def is_quantized(model: torch.nn.Module) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False))


def prepare_for_training(model: torch.nn.Module) -> torch.nn.Module:
    """PEFT's k-bit preparation (unquantized weights in fp32, inputs that carry gradients), and bitsandbytes' CPU
    inference repacking turned off: on CPUs with AVX512-BF16 an evaluation repacks 4-bit weights for its own
    kernel, after which a training forward fails (bitsandbytes 0.50: in-place add on a tensor that needs grad)."""
    from peft import prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def _quiet_bitsandbytes() -> None:
    import logging
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

"""`model.attn_implementation`: which attention kernel transformers runs. `auto` takes the fastest one available
for the model on the run's device: FlashAttention-2 on a CUDA GPU in bf16/fp16 when the flash-attn package is
installed and the architecture supports it, otherwise transformers' own choice (PyTorch's scaled-dot-product
attention where the architecture has it, else the eager implementation)."""
from __future__ import annotations

import importlib.util
from typing import Optional


def choose_attention(spec: str, model_class=None, device_type: str = "cpu", precision: str = "fp32") -> Optional[str]:
    """The attn_implementation to pass to transformers (None: let transformers choose)."""
    if spec != "auto":
        return spec
    fast_dtype = precision in ("bf16", "fp16")
    if device_type == "cuda" and fast_dtype and importlib.util.find_spec("flash_attn") is not None \
            and getattr(model_class, "_supports_flash_attn", False):
        return "flash_attention_2"
    return None


def attention_kwargs(recipe_model, auto_class, config, runtime) -> dict:
    """from_pretrained / from_config keyword arguments for the recipe's attention choice."""
    spec = getattr(recipe_model, "attn_implementation", "auto")
    model_class = _model_class(auto_class, config)
    chosen = choose_attention(spec, model_class, runtime.device.type if runtime else "cpu",
                              runtime.precision if runtime else "fp32")
    return {"attn_implementation": chosen} if chosen else {}


def _model_class(auto_class, config):
    try:
        mapping = auto_class._model_mapping
        return mapping[type(config)]
    except (KeyError, AttributeError):
        return None

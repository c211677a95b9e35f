"""The export check: each artefact a run writes, reloaded outside tuneforge (transformers, by the class its
config.json names), gives the outputs of the model as it was at the end of training, on held-out rows."""
from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Optional

import torch

EXPORT_RTOL = 1e-5  # the same fp32 function on the same device: equal up to the order of parallel sums
LABEL_KEYS = ("labels", "start_positions", "end_positions")
ROWS = 8


class TrainedOutputs:
    """At the end of training: the model's outputs (fp32, eval mode, no autocast) on the first rows of the
    validation data (else of the training data), and those rows' inputs."""

    def __init__(self):
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: Optional[torch.Tensor] = None

    def on_train_end(self, loop) -> None:
        split = loop.validation if loop.validation is not None else loop.train_split
        batch = split.batch(list(range(min(ROWS, len(split)))), loop.pad_id)
        self.inputs = model_inputs(loop.model, batch)
        was_training = loop.model.training
        loop.model.eval()
        with torch.no_grad():
            self.outputs = output_tensor(loop.model(**_on(self.inputs, _device(loop.model))))
        loop.model.train(was_training)


def model_inputs(model, batch: dict) -> dict:
    """The batch's tensors that the model's forward takes as inputs (labels left out)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    accepted = set(inspect.signature(base.forward).parameters)
    return {k: v for k, v in batch.items() if isinstance(v, torch.Tensor) and k in accepted and k not in LABEL_KEYS}


def output_tensor(out) -> torch.Tensor:
    """What a task reads from a forward: the logits (question answering: start and end logits side by side)."""
    if getattr(out, "logits", None) is not None:
        return out.logits.detach().float().cpu()
    return torch.cat([out.start_logits, out.end_logits], dim=-1).detach().float().cpu()


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _on(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def reload_outside(folder: Path) -> torch.nn.Module:
    """The folder as any Hugging Face tool loads it: transformers' class named by config.json's architectures."""
    import transformers

    config = json.loads((folder / "config.json").read_text())
    architecture = (config.get("architectures") or [None])[0]
    cls = getattr(transformers, architecture or "", None)
    if cls is None:
        raise RuntimeError(f"{folder}/config.json names no architecture transformers has ({architecture!r})")
    return cls.from_pretrained(folder, use_safetensors=True).eval()


def compare_reloaded(model, trained: TrainedOutputs) -> tuple[float, float]:
    """(largest absolute difference of the reloaded model's outputs (reload_outside) from the trained model's,
    largest output)."""
    with torch.no_grad():
        reloaded = output_tensor(model(**trained.inputs))
    if reloaded.shape != trained.outputs.shape:
        return float("inf"), float(trained.outputs.abs().max())
    return float((reloaded - trained.outputs).abs().max()), float(trained.outputs.abs().max())


def artefacts(run_dir: Path, adapter: bool, scratch: Path, console) -> dict[str, Path]:
    """The model folders a run's artefacts give a user: the full model, or for a mergeable adapter the merged
    model (`tuneforge merge`, written into the scratch folder)."""
    if not adapter:
        return {"full model (model/)": run_dir / "model"}
    from ..adapters import MERGEABLE, read_adapter_method
    from ..merging import merge

    if read_adapter_method(run_dir / "adapter") not in MERGEABLE:
        return {}
    out = scratch / "merged"
    merge(run_dir, out, console=console)  # (refuses, MergeError, when its merged outputs differ from the adapter's)
    return {"merged model (tuneforge merge)": out}


def _ending_ids(model, tokenizer, *more) -> list[int]:
    """The tokens that end generation: the tokenizer's EOS, the model's own generation_config.eos_token_id, `more`."""
    configured = model.generation_config.eos_token_id
    return sorted({tokenizer.eos_token_id, *more, *(configured if isinstance(configured, list) else [configured])}
                  - {None})


def generation_stops(model, tokenizer, after: int = 2) -> tuple[bool, str, int]:
    """Whether generation with the folder's own settings (generation_config.json, as any Hugging Face tool reads
    them) stops at the end-of-turn token: the reloaded model (reload_outside) is made to emit it after `after` tokens
    (greedy), and must stop there. Returns (stopped, the token, tokens generated)."""
    from transformers import LogitsProcessor, LogitsProcessorList

    from ..data.causal import end_of_turn_id

    stop = end_of_turn_id(tokenizer)
    stop = tokenizer.eos_token_id if stop is None else stop
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hello"}], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)["input_ids"]
    else:
        prompt = tokenizer("Hello", return_tensors="pt")["input_ids"]
    start = prompt.shape[1]

    enders = _ending_ids(model, tokenizer, stop)

    class EmitStopAfter(LogitsProcessor):  # no ending token before `after` tokens, then the end-of-turn token only
        def __call__(self, input_ids, scores):
            if input_ids.shape[1] - start < after:
                scores[:, enders] = float("-inf")
            elif input_ids.shape[1] - start == after:
                scores = torch.full_like(scores, float("-inf"))
                scores[:, stop] = 0.0
            return scores
    with torch.no_grad():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=after + 6,
                             do_sample=False, logits_processor=LogitsProcessorList([EmitStopAfter()]),
                             pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop)
    generated = out.shape[1] - start
    return generated == after + 1, tokenizer.convert_ids_to_tokens(stop), generated


PEFT_CLASSES = {"SEQ_CLS": "AutoPeftModelForSequenceClassification", "CAUSAL_LM": "AutoPeftModelForCausalLM",
                "TOKEN_CLS": "AutoPeftModelForTokenClassification", "QUESTION_ANS": "AutoPeftModelForQuestionAnswering"}


def compare_adapter(adapter_dir: Path, trained: TrainedOutputs) -> tuple[float, float, str]:
    """The adapter folder as a PEFT user opens it (PEFT's AutoPeftModelFor... of its task type, on the base its
    adapter_config.json names): (largest difference from the trained model's outputs, largest output, the class).
    An adapter that does not open raises; the caller reports why."""
    import peft

    task_type = json.loads((adapter_dir / "adapter_config.json").read_text()).get("task_type")
    name = PEFT_CLASSES.get(task_type, "AutoPeftModel")
    model = getattr(peft, name).from_pretrained(adapter_dir).eval()
    with torch.no_grad():
        reloaded = output_tensor(model(**trained.inputs))
    scale = float(trained.outputs.abs().max())
    if reloaded.shape != trained.outputs.shape:
        return float("inf"), scale, name
    return float((reloaded - trained.outputs).abs().max()), scale, name


def generation_speed(model, tokenizer, tokens: int = 16) -> tuple[float, Optional[float]]:
    """(seconds per generated token, peak memory MB during generation) for `tokens` greedy tokens from a short
    prompt, with the reloaded model (no stop token allowed, so that every token is generated)."""
    import time

    from transformers import LogitsProcessor, LogitsProcessorList

    from . import memory

    prompt = tokenizer("Hello", return_tensors="pt")["input_ids"]
    enders = _ending_ids(model, tokenizer)

    class NoEnd(LogitsProcessor):
        def __call__(self, input_ids, scores):
            scores[:, enders] = float("-inf")
            return scores
    resettable = memory.reset_peak()
    started = time.perf_counter()
    with torch.no_grad():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=tokens, do_sample=False,
                             logits_processor=LogitsProcessorList([NoEnd()]),
                             pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    seconds = time.perf_counter() - started
    return seconds / max(out.shape[1] - prompt.shape[1], 1), memory.peak_mb() if resettable else None

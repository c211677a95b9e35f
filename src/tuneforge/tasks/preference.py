"""Preference tasks: a reward model (a scalar head, Bradley-Terry loss) and a policy tuned on preference pairs
(DPO, IPO, SimPO, ORPO), each with its loss per batch of pairs and its metrics.

A batch holds the chosen rows of its pairs, then their rejected rows, so one forward scores both. The policy's
reference is the network with its adapter disabled (adapters: no second copy in memory), a frozen copy, or
log-probabilities computed once before training and carried by the batch (`reference_logps`).
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from ..objectives.preference import (dpo_loss, ipo_loss, orpo_loss, sequence_logprobs,
                                     simpo_loss)
from ..objectives.tokens import align_to_labels
from .language_model import LanguageModelTask
from .pairs import PairsTask

_BATCH_ONLY = ("labels", "reference_logps")  # batch keys that are not model inputs
REFERENCE_FREE = ("simpo", "orpo")  # losses that compare no reference policy
# Each loss's usual strength: DPO and IPO (Rafailov et al., Azar et al.) 0.1; SimPO's reward scale 2.0 (Meng et
# al.); ORPO's weight of the odds-ratio term 0.1 (Hong et al.).
DEFAULT_BETA = {"dpo": 0.1, "ipo": 0.1, "simpo": 2.0, "orpo": 0.1}


def pair_inputs(batch: dict) -> dict:
    """A batch of pairs without what is not a model input."""
    return {k: v for k, v in batch.items() if k not in _BATCH_ONLY}


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Evaluation mode for the block, then every module's own mode back (frozen groups stay in eval mode)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def disable_dropout(model: nn.Module) -> int:
    """Dropout probability 0 everywhere (as TRL does for preference training), adapters' included, and the
    attention dropout some architectures apply as a number (Llama's `attention_dropout`); returns the modules
    changed."""
    changed = 0
    for m in model.modules():
        if isinstance(m, nn.Dropout) and m.p:
            m.p, changed = 0.0, changed + 1
        elif isinstance(getattr(m, "attention_dropout", None), float) and m.attention_dropout:
            m.attention_dropout, changed = 0.0, changed + 1
    return changed


# ---------------------------------------------------------------- policy: DPO and relatives

class AdapterReference:
    """The policy network itself with its adapter switched off: the base model, no second copy."""

    def logits(self, model, inputs: dict) -> torch.Tensor:
        from torch.nn.parallel import DistributedDataParallel

        from ..adapters import disabled

        if isinstance(model, DistributedDataParallel):  # its wrapper hides the adapter switch; no-grad needs no DDP
            model = model.module
        with torch.no_grad(), eval_mode(model), disabled(model):
            return model(**inputs).logits


class CopyReference:
    """A frozen copy of the network as it was before training."""

    def __init__(self, model: nn.Module):
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)

    def logits(self, model, inputs: dict) -> torch.Tensor:
        with torch.no_grad():
            return self.model(**inputs).logits


def token_kl(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """(sum over response positions of KL(policy || reference) between the next-token distributions, positions).
    Row by row, so only one row's vocabulary-wide distributions are held at a time."""
    total, count = 0.0, 0
    logits, ref_logits = align_to_labels(logits, labels), align_to_labels(ref_logits, labels)
    for row in range(labels.shape[0]):
        keep = labels[row, 1:] != -100
        if not keep.any():
            continue
        p = logits[row, :-1][keep].float().log_softmax(-1)
        q = ref_logits[row, :-1][keep].float().log_softmax(-1)
        total += float((p.exp() * (p - q)).sum())
        count += int(keep.sum())
    return total, count


class PolicyMetrics:
    """Reward accuracy, mean chosen and rejected rewards (the loss's implicit reward: beta * log(pi / ref) for
    DPO, the same per token for IPO, beta * mean token log-prob for SimPO and ORPO), their margin, the mean summed log-probs of
    each response, and KL(policy || reference) per response token, when a reference network is at hand."""

    def __init__(self):
        self.parts: dict[str, list[torch.Tensor]] = {"chosen": [], "rejected": [], "chosen_logps": [],
                                                     "rejected_logps": []}
        self.kl_sum, self.kl_tokens = 0.0, 0

    def update(self, outputs: dict, labels=None) -> None:
        for k in self.parts:
            self.parts[k].append(outputs[k].detach().float().cpu())
        if outputs.get("kl") is not None:
            self.kl_sum += outputs["kl"][0]
            self.kl_tokens += outputs["kl"][1]

    def merge(self, other: "PolicyMetrics") -> None:
        for k in self.parts:
            self.parts[k].extend(other.parts[k])
        self.kl_sum += other.kl_sum
        self.kl_tokens += other.kl_tokens

    def compute(self) -> dict[str, float]:
        nan = float("nan")
        if not self.parts["chosen"]:
            return {k: nan for k in ("reward_accuracy", "chosen_reward", "rejected_reward", "margin", "chosen_logps",
                                     "rejected_logps", "kl")}
        v = {k: torch.cat(x) for k, x in self.parts.items()}
        return {"reward_accuracy": float((v["chosen"] > v["rejected"]).float().mean()),
                "chosen_reward": float(v["chosen"].mean()), "rejected_reward": float(v["rejected"].mean()),
                "margin": float((v["chosen"] - v["rejected"]).mean()),
                "chosen_logps": float(v["chosen_logps"].mean()), "rejected_logps": float(v["rejected_logps"].mean()),
                "kl": self.kl_sum / self.kl_tokens if self.kl_tokens else nan}


@dataclass
class PreferenceTask(PairsTask, LanguageModelTask):
    loss: str = "dpo"
    beta: float = 0.1
    label_smoothing: float = 0.0
    gamma: float = 0.5
    reference: Optional[object] = None   # AdapterReference, CopyReference, or None
    name: str = "preference"
    problem_type: str = "causal_lm"
    default_metric: str = "loss"

    has_reference = True
    keys = ("task.sample_prompts", "data.chat_template", "data.chosen_column", "data.rejected_column",
            "data.drop_invalid_pairs", "task.loss", "task.label_smoothing", "task.gamma", "task.beta", "task.reference",
            "task.disable_dropout")

    @property
    def reference_free(self) -> bool:
        return self.loss in REFERENCE_FREE

    def check_recipe(self, recipe) -> None:
        super().check_recipe(recipe)
        t = recipe.task
        check_reference_choice(recipe)
        if t.label_smoothing and t.loss != "dpo":
            raise ValueError(f"task.label_smoothing is read by loss dpo only; task.loss is {t.loss!r}")
        if t.gamma != type(t).model_fields["gamma"].get_default() and t.loss != "simpo":
            raise ValueError(f"task.gamma is read by loss simpo only; task.loss is {t.loss!r}")
        if t.reference == "precomputed" and t.loss in REFERENCE_FREE:
            raise ValueError(f"task.reference: precomputed log-probs are unused by loss {t.loss!r} (reference-free); "
                             "use auto (or copy, to measure the KL divergence)")
        if t.reference == "none" and t.loss not in REFERENCE_FREE:
            raise ValueError(f"task.reference: none leaves loss {t.loss!r} without the reference it compares to; "
                             "use auto, copy or precomputed (or a reference-free loss: simpo, orpo)")

    def configured(self, recipe) -> "PreferenceTask":
        t = recipe.task
        return PreferenceTask(loss=t.loss, beta=t.preference_beta, label_smoothing=t.label_smoothing, gamma=t.gamma)

    def reference_needed(self, recipe) -> bool:
        return recipe.task.loss not in REFERENCE_FREE

    def default_beta(self, task_spec) -> float:
        return DEFAULT_BETA[task_spec.loss]

    def describe_objective(self, recipe) -> str:
        return f"{recipe.task.loss} (beta {recipe.task.preference_beta:g})"

    def encode(self, recipe, tokenizer, examples, space):
        from ..data.preference import encode_policy_pairs
        return encode_policy_pairs(tokenizer, examples, recipe.model.max_length, recipe.data.chat_template)

    def prompt_format(self, recipe, tokenizer, first) -> str:
        return super().prompt_format(recipe, tokenizer, first.causal(first.chosen))

    def logits(self, model, split, batch_size: int, pad_id: int, runtime) -> torch.Tensor:
        from ..engine.evaluate import run_target_logits
        return run_target_logits(model, split, batch_size, pad_id)

    def num_outputs(self, num_labels: int) -> int:
        return 0

    def make_metrics(self, num_labels: int = 0, threshold: float = 0.5) -> PolicyMetrics:
        return PolicyMetrics()

    def per_pair_loss(self, pc, pr, rc, rr, tc, tr) -> torch.Tensor:
        """The loss of each pair from summed log-probs (policy p, reference r) and response token counts t."""
        if self.loss == "dpo":
            return dpo_loss(pc, pr, rc, rr, self.beta, self.label_smoothing)
        if self.loss == "ipo":
            return ipo_loss(pc, pr, rc, rr, tc, tr, self.beta)
        if self.loss == "simpo":
            return simpo_loss(pc, pr, tc, tr, self.beta, self.gamma)
        return orpo_loss(pc, pr, tc, tr, self.beta)[0]

    def batch_loss(self, model, batch: dict, evaluating: bool = False):
        inputs, labels = pair_inputs(batch), batch["labels"]
        logits = model(**inputs).logits
        logps, tokens = sequence_logprobs(align_to_labels(logits, labels), labels)
        pc, pr = logps.chunk(2)
        tc, tr = tokens.float().chunk(2)
        ref_logps, kl = None, None
        if "reference_logps" in batch:
            ref_logps = batch["reference_logps"].to(logps.dtype)
        wants_forward = self.reference is not None and (evaluating or (ref_logps is None and not self.reference_free))
        if wants_forward:
            ref_logits = self.reference.logits(model, inputs)
            if ref_logps is None:
                ref_logps = torch.stack(sequence_logprobs(align_to_labels(ref_logits, labels), labels)[0].chunk(2), 1)
            if evaluating:
                kl = token_kl(logits.detach(), ref_logits, labels)
        if ref_logps is None and not self.reference_free:
            raise RuntimeError(f"loss {self.loss!r} needs reference log-probabilities and none were given")
        rc, rr = (ref_logps[:, 0], ref_logps[:, 1]) if ref_logps is not None else (None, None)
        loss = self.per_pair_loss(pc, pr, rc, rr, tc, tr)
        if self.reference_free:
            chosen, rejected = self.beta * pc / tc, self.beta * pr / tr
        elif self.loss == "ipo":  # its loss compares per-token log-ratios: so do its rewards
            chosen, rejected = self.beta * (pc - rc) / tc, self.beta * (pr - rr) / tr
        else:
            chosen, rejected = self.beta * (pc - rc), self.beta * (pr - rr)
        outputs = {"chosen": chosen, "rejected": rejected, "chosen_logps": pc, "rejected_logps": pr, "kl": kl}
        return loss.sum(), outputs


@torch.no_grad()
def reference_logps(split, logits_of, batch_size: int, pad_id: int, runtime=None) -> torch.Tensor:
    """Every pair's (chosen, rejected) reference log-probs, n x 2 on the host, from `logits_of(inputs)` (computed on
    the runtime's device)."""
    out = torch.empty(len(split), 2, dtype=torch.float64)
    for start in range(0, len(split), batch_size):
        indices = list(range(start, min(start + batch_size, len(split))))
        batch = split.batch(indices, pad_id)
        batch.pop("reference_logps", None)
        if runtime is not None:
            batch = runtime.to_device(batch)
        logits = logits_of(pair_inputs(batch))
        logps = sequence_logprobs(align_to_labels(logits, batch["labels"]), batch["labels"])[0]
        out[indices] = torch.stack(logps.double().chunk(2), 1).cpu()
    return out


def make_reference(mode: str, needed: bool, model: nn.Module, adapter: bool):
    """The reference network for `task.reference` (None when there is none to keep), and the mode in effect.
    `needed`: whether the loss uses a reference (DPO, IPO; GRPO with a KL penalty)."""
    if mode == "auto":
        mode = "adapter" if adapter else ("copy" if needed else "none")
    if mode == "none":
        return None, mode
    if adapter:  # precomputed or not, the base network is at hand for free: the KL estimate needs it
        return AdapterReference(), mode
    if mode == "copy":
        return CopyReference(model), mode
    return None, mode  # precomputed, whole-network methods: no copy is kept


def check_reference_choice(recipe) -> None:
    """task.reference against the method: what preference and GRPO runs share."""
    if recipe.method.is_adapter and recipe.task.reference == "copy":
        raise ValueError(f"task.reference: copy is for whole-network methods; with an adapter ({recipe.method.name}) "
                         "the reference is the base network, the adapter switched off (no copy needed); use auto")

"""The recipe's method and training sections: what learns, and how it is trained."""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from .sections import Section, epoch_or_steps
from .values import LearningRate

MethodName = Literal["full", "head", "freeze", "gradual", "lora", "dora", "ia3", "prefix", "prompt", "bottleneck"]
ADAPTER_METHODS = ("lora", "dora", "ia3", "prefix", "prompt", "bottleneck")

# Adapters train few, freshly initialized weights and need a larger step than full fine-tuning; these are the
# usual rates from each method's paper and PEFT's examples. training.lr, when given, overrides them.
DEFAULT_LR = {"full": 5e-5, "head": 5e-5, "freeze": 5e-5, "gradual": 5e-5, "lora": 1e-3, "dora": 1e-3,
              "ia3": 3e-3, "prefix": 1e-2, "prompt": 3e-2, "bottleneck": 1e-3}

# Which methods read which option: an option changed from its default under another method is an error.
_OPTION_OWNERS = {
    "freeze_embeddings": ("freeze",), "freeze_layers": ("freeze",), "freeze_patterns": ("freeze",),
    "unfreeze_every": ("gradual",),
    "r": ("lora", "dora"), "alpha": ("lora", "dora"), "dropout": ("lora", "dora", "bottleneck"),
    "target_modules": ("lora", "dora", "ia3", "bottleneck"), "feedforward_modules": ("ia3",),
    "num_virtual_tokens": ("prefix", "prompt"), "prefix_projection": ("prefix",),
    "bottleneck_size": ("bottleneck",), "placement": ("bottleneck",), "non_linearity": ("bottleneck",),
    "layer_lr_decay": ("full", "freeze", "gradual"), "group_lr": ("full", "head", "freeze", "gradual"),
}


class MethodSpec(Section):
    name: MethodName = Field("full", description="full | head (head only) | freeze (embeddings / first N layers / patterns) | "
                             "gradual (top-down unfreezing) | lora | dora | ia3 | prefix | prompt | bottleneck (adapters: "
                             "the pre-trained weights stay frozen)")
    freeze_embeddings: bool = False
    freeze_layers: int = Field(0, ge=0, description="freeze the first N transformer blocks (with method freeze)")
    freeze_patterns: list[str] = Field(default_factory=list, description="glob patterns of parameter names to freeze")
    unfreeze_every: Union[Literal["epoch"], int] = Field("epoch", description="gradual: unfreeze one more group every epoch or every N optimizer steps")
    layer_lr_decay: Optional[float] = Field(None, gt=0, le=1, description="layer-wise LR decay: group k below the head gets lr * decay**k")
    group_lr: dict[str, LearningRate] = Field(default_factory=dict, description="explicit learning rate per layer group (embeddings, layer.0, ..., head)")
    # Adapter options
    r: int = Field(8, gt=0, description="lora/dora: rank of the update")
    alpha: float = Field(16.0, gt=0, description="lora/dora: scaling numerator (the update is scaled by alpha / r)")
    dropout: float = Field(0.1, ge=0, lt=1, description="lora/dora: dropout on the adapter's input; bottleneck: inside the adapter")
    target_modules: Union[Literal["auto"], list[str], str] = Field(
        "auto", description="lora/dora/ia3/bottleneck: 'auto' (found from the architecture), a list of module-name "
        "suffixes (e.g. [query, value]) or one regular expression matched against full module names")
    feedforward_modules: Union[Literal["auto"], list[str], str] = Field(
        "auto", description="ia3: which targets are feed-forward layers (scaled on their input); 'auto' = the block's output projection")
    num_virtual_tokens: int = Field(20, gt=0, description="prefix/prompt: number of virtual tokens")
    prefix_projection: bool = Field(False, description="prefix: reparameterize the prefix through a two-layer MLP")
    bottleneck_size: int = Field(64, gt=0, description="bottleneck: width of the adapter's bottleneck")
    placement: Literal["houlsby", "pfeiffer"] = Field("houlsby", description="bottleneck: after attention and feed-forward (houlsby) or after feed-forward only (pfeiffer)")
    non_linearity: Literal["relu", "gelu", "tanh", "swish"] = Field("relu", description="bottleneck: activation between down and up projection")

    _every = field_validator("unfreeze_every")(classmethod(lambda cls, v: epoch_or_steps(v)))

    @property
    def is_adapter(self) -> bool:
        return self.name in ADAPTER_METHODS

    @model_validator(mode="after")
    def _consistent(self):
        misplaced = [k for k, owners in _OPTION_OWNERS.items()
                     if self.name not in owners and getattr(self, k) != type(self).model_fields[k].get_default(call_default_factory=True)]
        if misplaced:
            where = "; ".join(f"{k} is read by {'/'.join(_OPTION_OWNERS[k])}" for k in misplaced)
            common = [m for m in _OPTION_OWNERS[misplaced[0]] if all(m in _OPTION_OWNERS[k] for k in misplaced)]
            fix = f"set method.name: {common[0]}" if common else "change method.name"
            raise ValueError(f"method.name is {self.name!r}, which does not read {', '.join(misplaced)} ({where}); "
                             f"remove them or {fix}")
        if self.name == "freeze" and not (self.freeze_layers or self.freeze_embeddings or self.freeze_patterns):
            raise ValueError("method 'freeze' freezes nothing; set freeze_embeddings, freeze_layers or freeze_patterns")
        return self


class EarlyStoppingSpec(Section):
    patience: int = Field(2, ge=1, description="evaluations without improvement before stopping")
    min_delta: float = Field(0.0, ge=0)


class TrainingSpec(Section):
    epochs: int = Field(3, ge=1)
    max_steps: Optional[int] = Field(None, gt=0, description="stop after this many optimizer steps")
    batch_size: int = Field(32, gt=0, description="examples per forward pass")
    grad_accum: int = Field(1, gt=0, description="forward passes per optimizer step; the effective batch is batch_size * grad_accum")
    eval_batch_size: int = Field(64, gt=0)
    group_by_length: bool = Field(True, description="batch rows of similar length together: each window of 50 batches "
                                  "of the random order sorted by length (far less padding: 2x faster on the demo, "
                                  "test accuracy within 0.7 points over 3 seeds); false: plain random batches")
    lr: Optional[LearningRate] = Field(None, description="learning rate of what trains in the network (default: 5e-5 for "
                                "full/head/freeze/gradual; per adapter method: lora/dora 1e-3, ia3 3e-3, prefix 1e-2, "
                                "prompt 3e-2, bottleneck 1e-3)")
    head_lr: Optional[LearningRate] = Field(None, description="learning rate of the new head (default: lr)")
    weight_decay: float = Field(0.01, ge=0, description="not applied to biases and norm weights")
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    warmup_steps: Optional[int] = Field(None, ge=0, description="overrides warmup_ratio")
    max_grad_norm: Optional[float] = Field(1.0, gt=0)
    eval_every: Union[Literal["epoch"], int] = "epoch"
    log_every: int = Field(10, gt=0)
    checkpoint_every: Optional[int] = Field(None, gt=0, description="also checkpoint every N optimizer steps (always at each epoch end)")
    keep_checkpoints: int = Field(1, ge=1)
    metric: Optional[str] = Field(None, description="validation metric that picks the best model (default: task's)")
    early_stopping: Optional[EarlyStoppingSpec] = None
    restore_best: bool = True
    seed: int = 42
    head_seed: Optional[int] = Field(None, description="seed of the new head's initialization (default: seed)")
    data_seed: Optional[int] = Field(None, description="seed of the data order (default: seed)")
    device: str = Field("auto", description="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps; under torchrun "
                        "each process takes the GPU of its local rank")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="autocast dtype (weights, optimizer state and losses stay fp32); fp16 adds a gradient "
        "scaler. auto: bf16 on GPUs with bf16 tensor cores and on CPUs where a bf16 layer step measures at least "
        "1.2x faster than fp32 (bf16 instructions), else fp32; the choice is printed and kept in summary.json")
    distributed: Literal["ddp", "fsdp"] = Field("ddp", description="with several processes: ddp (a full copy of the "
                                                "model per process) or fsdp (FSDP2: weights, gradients and optimizer "
                                                "state sharded across processes, for models that do not fit one device)")
    collective_timeout: int = Field(60, gt=0, description="minutes a process waits for the others (e.g. while rank 0 "
                                    "saves a big model) before the run is ended")
    tf32: bool = Field(True, description="TF32 matmuls on GPUs that have them (Ampere and newer); false: exact fp32")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass: less memory, "
                                         "about a third more time")
    threads: Optional[int] = Field(None, gt=0, description="torch CPU threads (default: torch's choice)")
    cache_frozen_prefix: bool = Field(True, description="when the embeddings and the lowest blocks are frozen (head, "
                                      "freeze:N, gradual's first stages), compute their output once per row and train "
                                      "only the blocks above (text models; same result as recomputing)")
    cache_memory_gb: float = Field(4.0, ge=0, description="frozen-prefix cache: above this size it is kept in a file "
                                   "in RUN_DIR/cache instead of memory")
    fast_dropout: bool = Field(True, description="on CPU, draw dropout masks from a faster random source (numpy's "
                               "SFC64, seeded from torch's generator, so seeds and resume still decide every mask) "
                               "instead of torch's bernoulli_, which costs more than the matmuls around it")
    fused_lora: bool = Field(True, description="on CPU, compute each LoRA linear (plain LoRA, frozen base) as one "
                             "fused step instead of PEFT's separate dropout, adapter, scaling and sum; same weights "
                             "and function")
    nonfinite: Literal["stop", "skip"] = Field("stop", description="a step whose loss or gradient is not finite "
                                               "(NaN or inf) changes no weight; stop: the run stops there with an "
                                               "error naming the step, keeping the last good checkpoint; skip: the "
                                               "step is skipped and counted (summary.json: skipped_steps)")
    report_to: list[Literal["tensorboard", "mlflow", "wandb", "trackio"]] = Field(
        default_factory=lambda: ["tensorboard"], description="experiment trackers that receive the resolved recipe, "
        "every logged metric and the final model or adapter, from rank 0: tensorboard (scalars in the run folder, "
        "when installed), mlflow, wandb, trackio (each needs its package and is set up by its own environment "
        "variables, e.g. MLFLOW_TRACKING_URI, WANDB_MODE; docs/tracking.md; [] for none)")
    progress: bool = True

    _every = field_validator("eval_every")(classmethod(lambda cls, v: epoch_or_steps(v)))

"""The whole recipe: five independent choices (model, task, data, method, training), the optional stages, output;
and the checks that span sections."""
from __future__ import annotations

from typing import Optional

import yaml
from pydantic import Field, model_validator

from ..tasks import TASKS, owned_keys
from .method import DEFAULT_LR, MethodSpec, TrainingSpec
from .sections import DataSpec, ModelSpec, OutputSpec, Section, TaskSpec
from .stages import AdaptSpec, DistillSpec, WeakSpec

class Recipe(Section):
    model: ModelSpec = Field(default_factory=ModelSpec)
    task: TaskSpec = Field(default_factory=TaskSpec)
    data: DataSpec
    method: MethodSpec = Field(default_factory=MethodSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    weak: Optional[WeakSpec] = Field(None, description="weak supervision: labels from rules or a weak-label column, "
                                     "and optional COSINE self-training")
    distill: Optional[DistillSpec] = Field(None, description="knowledge distillation from a teacher into this "
                                           "recipe's model (the student)")
    adapt: Optional[AdaptSpec] = Field(None, description="domain adaptation: continued pre-training on unlabeled "
                                       "in-domain text before the task's fine-tuning")
    output: OutputSpec = Field(default_factory=OutputSpec)

    @property
    def task_kind(self):
        """The task this recipe trains (tasks/): what it reads, loads and checks."""
        return TASKS[self.task.type]

    @model_validator(mode="after")
    def _task_and_data(self):
        task = self.task_kind
        task.check_recipe(self)  # the task's own checks (its data columns, its losses, the methods it allows)
        from ..assets import DATASET_TASK
        made_for, holds = DATASET_TASK.get(self.data.dataset, (None, None))
        if made_for is not None and made_for != self.task.type:
            raise ValueError(f"data.dataset {self.data.dataset!r} is {holds}; set task.type: {made_for} "
                             f"(it is {self.task.type!r})")
        if not task.images and self.model.image_size is not None:
            raise ValueError(f"model.image_size is for image tasks; task.type is {self.task.type!r}")
        if not self.model.pretrained and self.method.name != "full":
            raise ValueError(f"model.pretrained is false (random initialization) and method.name is "
                             f"{self.method.name!r}: only full training makes sense from random weights (the frozen "
                             "parts would stay random); set method.name: full")
        if self.method.is_adapter and not task.trained_by_adapters:
            raise ValueError(f"task {self.task.type} trains the network a task will start from; method "
                             f"{self.method.name!r} leaves it unchanged beside an adapter. Use full or a freezing method")
        return self

    @model_validator(mode="after")
    def _quantized_base(self):
        """A quantized base cannot learn: only an adapter beside it can (PEFT's k-bit training)."""
        q = self.model.quantization
        if q is None:
            return self
        if self.method.name not in ("lora", "dora", "ia3", "prefix", "prompt"):
            raise ValueError(f"model.quantization {q!r} freezes the base in {q} weights, which cannot be trained; "
                             f"method.name is {self.method.name!r}: use lora, dora, ia3, prefix or prompt, or drop "
                             "model.quantization")
        if not self.task_kind.quantizable:
            raise ValueError(f"model.quantization is for transformers text models; task.type is {self.task.type}")
        return self

    @model_validator(mode="after")
    def _half_precision_weights(self):
        """Weights loaded in bf16/fp16 compute under autocast in that dtype (so a new fp32 head or adapter meets them
        in one dtype): precision auto becomes it, and another precision is an error."""
        half = {"bfloat16": "bf16", "float16": "fp16"}.get(self.model.dtype)
        if half is None:
            return self
        precision = self.training.precision
        if precision == "auto":
            self.training.__dict__["precision"] = half  # not an assignment: that would validate again
        elif precision != half:
            raise ValueError(f"model.dtype {self.model.dtype} loads the weights in {half}, and training.precision is "
                             f"{precision!r}; weights in one dtype compute under autocast in it: set training.precision "
                             f"to {half} or auto, or load them in float32 (model.dtype: float32)")
        if half == "fp16" and self.method.name == "gradual":
            raise ValueError("model.dtype float16 with method gradual: blocks unfrozen later would train in fp16, "
                             "which the gradient scaler cannot update; use bfloat16 or float32")
        return self

    @model_validator(mode="after")
    def _keys_of_the_task(self):
        """Options set for a task that does not read them are errors, not silently ignored."""
        kind = self.task.type
        by_owners: dict[tuple, list[str]] = {}
        for key, owners in owned_keys(TASKS).items():
            if kind not in owners and _changed(self, key):
                by_owners.setdefault(owners, []).append(key)
        for owners, keys in by_owners.items():
            names = " and ".join([", ".join(owners[:-1]), owners[-1]]) if len(owners) > 1 else owners[0]
            raise ValueError(f"{', '.join(keys)}: for {names} tasks only; task.type is {kind!r}")
        return self

    @model_validator(mode="after")
    def _stages(self):
        """Which stages run with which task, and with each other."""
        task, kind = self.task_kind, self.task.type
        if self.weak is not None:
            if not task.weakly_supervised:
                raise ValueError(f"weak supervision is for task.type {_names(lambda t: t.weakly_supervised)}; it is "
                                 f"{kind!r}")
            if self.data.dataset:
                raise ValueError(f"weak supervision reads data.train (rows to label); data.dataset {self.data.dataset!r} "
                                 "has gold labels already")
            if self.weak.self_training and self.method.name in ("prefix", "prompt"):
                raise ValueError(f"weak.self_training reads the encoder's features at the first token, which method "
                                 f"{self.method.name!r} shifts by its virtual tokens; use full, a freezing method, lora, "
                                 "dora, ia3 or bottleneck")
        d = self.distill
        if d is not None:
            if not task.distillable:
                raise ValueError(f"distill: for task.type {_names(lambda t: t.distillable, ', ')}; it is {kind!r}")
            if self.weak is not None:
                raise ValueError("distill and weak in one recipe: train on the weak labels first, then distill that "
                                 "run (distill.teacher: its run directory) in a second recipe")
            if d.cache and d.hidden_weight:
                raise ValueError("distill.cache stores the teacher's outputs, not its hidden states, which "
                                 "distill.hidden_weight needs at every step; set cache: false or hidden_weight: 0")
            if d.cache and task.generative:
                raise ValueError("distill.cache: a causal LM teacher's outputs are a vocabulary-wide distribution per "
                                 "token, too large to store; set cache: false (the teacher then runs beside the student)")
            if d.unlabeled and not task.transfer_set:
                raise ValueError(f"distill.unlabeled: a transfer set of single texts, for task.type classification; "
                                 f"it is {kind!r}")
            if d.hidden_weight and self.method.name in ("prefix", "prompt"):
                raise ValueError(f"distill.hidden_weight matches hidden states position by position, which method "
                                 f"{self.method.name!r} shifts by its virtual tokens; use another method")
        if self.adapt is not None:
            if not task.adaptable:
                raise ValueError(f"adapt: continued pre-training before a task's fine-tuning; task.type {kind!r} is "
                                 "not such a task (to only adapt, use task.type masked-lm or causal-lm)")
            if not self.model.pretrained:
                raise ValueError("adapt continues pre-training; model.pretrained is false")
            if self.weak is not None:
                raise ValueError("adapt and weak in one recipe: adapt first (a task.type masked-lm run on the "
                                 "training file's text), then name that run as model.name in the weak recipe")
        return self

    @property
    def lr(self) -> float:
        """The learning rate in effect: training.lr, or the method's default."""
        return self.training.lr if self.training.lr is not None else DEFAULT_LR[self.method.name]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _changed(recipe: Recipe, key: str) -> bool:
    """Whether recipe key 'section.name' differs from its default."""
    section, name = key.split(".")
    part = getattr(recipe, section)
    return getattr(part, name) != type(part).model_fields[name].get_default(call_default_factory=True)


def _names(wanted, sep: str = " and ") -> str:
    """The registry's task names for which `wanted(task)` holds."""
    return sep.join(n for n, t in TASKS.items() if wanted(t))

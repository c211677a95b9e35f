"""Distillation as a stage: a teacher's outputs as soft targets for this recipe's model (the student). The stage
wraps the task's objective once the model is loaded, adds transfer rows and cached teacher outputs once the data
is encoded, and measures teacher against student at the end."""
from __future__ import annotations

from .base import RunContext, Stage


class DistillStage(Stage):
    key = "distill"

    def with_model(self, ctx: RunContext) -> None:
        from ..distill.setup import prepare_distillation

        ctx.task, self.teacher, self.info = prepare_distillation(self.recipe, ctx.task, ctx.loaded, ctx.space,
                                                                 str(ctx.runtime.device))
        if not getattr(getattr(self.teacher.model, "config", None), "quantization_config", None):
            self.teacher.model.to(ctx.runtime.device)  # (a quantized teacher was placed as it loaded)

    def with_encoded(self, ctx: RunContext) -> None:
        from ..distill.setup import add_transfer_rows, attach_cached_outputs

        recipe = self.recipe
        transfer, notes = add_transfer_rows(recipe, ctx.splits, ctx.encoded["train"], ctx.tokenizer, ctx.space)
        for w in notes:
            ctx.console.print(f"[yellow]warning:[/] {w}")
        self.info["transfer_rows"] = len(transfer)
        self.teacher_note = None
        if self.info["cache"]:
            self.teacher_note = attach_cached_outputs(recipe, self.teacher, ctx.splits["train"] + transfer,
                                                      ctx.encoded["train"], ctx.space)

    def report(self, ctx: RunContext) -> list[str]:
        from ..distill.setup import describe
        return [describe(self.info), *([self.teacher_note] if self.teacher_note else [])]

    def summary(self, ctx: RunContext) -> dict:
        if self.recipe.distill.report:
            from ..distill.setup import distillation_report
            self.info["report"] = distillation_report(self.recipe, self.teacher, ctx.model, ctx.splits, ctx.encoded,
                                                      ctx.metrics, ctx.task, ctx.space, ctx.pad_id, ctx.run_dir,
                                                      ctx.console, ctx.stored, ctx.runtime.alone())
        return {"distillation": self.info}

    def validate(self, recipe, space, tokenizer, model, kept, blocks_before) -> dict:
        """The teacher must load and agree with the student before a run starts."""
        from ..distill.setup import check_distillation
        from ..distill.teacher import load_teacher

        teacher = load_teacher(recipe, space.names, tokenizer)
        check_distillation(recipe, teacher, model, kept, blocks_before)
        agrees = "its tokenizer matches the student's" if recipe.task_kind.generative else "its labels match the data's"
        return {"teacher": f"{teacher.source} (loaded; {agrees})"}

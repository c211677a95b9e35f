"""Domain adaptation as a stage: continued pre-training (adapt.py) runs first, as a run of its own inside the run
directory, and the task's model is then loaded from the adapted one."""
from __future__ import annotations

from .base import RunContext, Stage


class AdaptStage(Stage):
    key = "adapt"
    folders = ("adapt", "adapt-data")  # kept when the task stage starts over in the same run directory
    validate_first = True  # the whole recipe, the task's data and the teacher are checked before this stage runs

    def before(self, ctx: RunContext) -> None:
        from ..adapt import run_adaptation

        recipe = self.recipe
        adapted, self.report_ = run_adaptation(recipe, resume=ctx.resume, overwrite=ctx.overwrite,
                                               console=ctx.console, train=ctx.train_entry)
        ctx.model_recipe = recipe.model_copy(update={"model": recipe.model.model_copy(update={"name": str(adapted)})})
        ctx.keep = (*ctx.keep, *self.folders)  # when the run starts over, the stage just run stays

    def report(self, ctx: RunContext) -> list[str]:
        return [f"  starting from the adapted model {ctx.model_recipe.model.name}"]

    def summary(self, ctx: RunContext) -> dict:
        return {"adaptation": self.report_}

    def validate(self, recipe, space, tokenizer, model, kept, blocks_before) -> dict:
        from ..adapt import adaptation_objective, adaptation_texts

        texts, counts = adaptation_texts(recipe)
        return {"adaptation": f"adaptation first ({adaptation_objective(recipe)}) on {len(texts)} unlabeled rows: "
                              + ", ".join(f"{k} {v}" for k, v in counts.items())}

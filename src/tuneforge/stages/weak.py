"""Weak supervision as a stage: the task's training rows labelled by rules or a weak-label column (the stage
provides the data), the label model's soft targets, then the rules' analysis and, when asked, COSINE
self-training after the first stage."""
from __future__ import annotations

import time

from ..data.collate import encode_texts
from ..data.dataset import TextExample
from ..engine.checkpoint import restore_weights
from ..engine.evaluate import run_evaluation
from ..engine.optim import make_optimizer
from ..errors import DataError
from ..preparation import param_groups
from ..training import best_weights
from .base import RunContext, Stage


class WeakStage(Stage):
    key = "weak"

    def load_data(self, recipe, notes: list):
        from ..weak.data import load_weak_data

        self.data, evaluation, origin = load_weak_data(recipe)
        if not self.data.labelled:
            raise DataError([f"{recipe.data.train}: no training row got a weak label (every source abstained on every "
                             "row); check the rules, or weak.column and weak.abstain"])
        if "validation" not in evaluation:
            notes.append("no data.validation: weak labels are not gold, so none is carved from the training file; "
                         "without gold validation rows the best step cannot be picked and self-training runs blind")
        return {"train": self.data.labelled, **evaluation}, self.data.space, origin

    def with_encoded(self, ctx: RunContext) -> None:
        if self.recipe.weak.soft:
            ctx.encoded["train"].labels = self.data.targets  # cross-entropy against the label model's probabilities

    def line(self) -> str:
        w, summary = self.recipe.weak, self.data.summary()
        source = f"column {w.column!r}" if w.column else f"{len(self.data.function_names)} labeling functions and " \
            f"{w.label_model}"
        line = (f"weak labels ({source}, {'soft' if w.soft else 'hard'}): {summary['labelled']} of {summary['rows']} "
                f"rows labelled, {summary['unlabelled']} without a label")
        quality = summary.get("label_model")
        if quality and quality.get("accuracy") is not None:
            line += (f"; {quality['accuracy']:.1%} right against the {quality['scored_rows']} gold labels of "
                     "weak.gold_column")
        return line

    def report(self, ctx: RunContext) -> list[str]:
        return ["  " + self.line()]

    def validate(self, recipe, space, tokenizer, model, kept, blocks_before) -> dict:
        return {"weak": {**self.data.summary(), "line": self.line()}}

    def after_training(self, ctx: RunContext) -> None:
        """Write the rules' analysis and the labels, measure the first stage, then run COSINE self-training when the
        recipe asks for it (the model ends as its best validation step)."""
        from ..weak.analysis import print_analysis, write_analysis
        from ..weak.data import write_weak_labels

        recipe, runtime, console, data = self.recipe, ctx.runtime, ctx.console, self.data
        t, encoded, space = recipe.training, ctx.encoded, ctx.space
        if runtime.is_main:
            if data.analysis is not None:
                write_analysis(data.analysis, ctx.run_dir / "weak", {"label_quality": data.quality})
                print_analysis(console, data.analysis)
            write_weak_labels(data, ctx.run_dir / "weak" / "labels.jsonl")
        stage_one = ctx.loop.state
        measured = {k: run_evaluation(ctx.model, encoded[k], ctx.task, len(space.names), 0.5, t.eval_batch_size,
                                      ctx.pad_id, runtime) for k in ("validation", "test") if k in encoded}
        self.report_ = {**data.summary(), "stage_one": {"best_step": stage_one.best_step, "steps": stage_one.global_step,
                                                        "seconds": round(ctx.train_seconds, 2), "metrics": measured}}
        st = recipe.weak.self_training
        if st is None:
            ctx.metrics = dict(measured)  # the model is the first stage's: measured already, on the same weights
            return
        self._self_training(ctx, measured)

    def _self_training(self, ctx: RunContext, measured: dict) -> None:
        from ..weak.self_training import run_self_training

        recipe, runtime, console, data = self.recipe, ctx.runtime, ctx.console, self.data
        t, st, encoded = recipe.training, recipe.weak.self_training, ctx.encoded
        rows = [TextExample(text=ex.text, source=ex.source) for ex in data.labelled + data.unlabelled]
        split = encode_texts(ctx.tokenizer, rows, recipe.model.max_length)  # targets: pseudo-labels
        optimizer = make_optimizer(param_groups(recipe, ctx.model, ctx.groups, st.lr or recipe.lr))
        pooling = "cls" if getattr(ctx.tokenizer, "cls_token_id", None) is not None else "last"
        console.print(f"[bold]self-training[/] (COSINE): {len(rows)} rows ({len(data.unlabelled)} without a weak "
                      f"label), {st.steps} steps, pseudo-labels refreshed every {st.update_every}; threshold "
                      f"{st.threshold:g}, contrastive weight {st.contrastive_weight:g}, confidence weight "
                      f"{st.confidence_weight:g}")
        stage_one_best = best_weights(ctx.run_dir)
        # Self-training must beat the first stage's best validation score for its weights to be kept.
        keep_from = ctx.loop.state.best_metric if t.restore_best and runtime.gather(stage_one_best.exists())[0] \
            else None
        started = time.perf_counter()
        state, refreshes, best = run_self_training(
            recipe=recipe, model=ctx.model, rows=split, validation=encoded.get("validation"), pooling=pooling,
            optimizer=optimizer, set_train_mode=ctx.set_train_mode, saved_names=ctx.saved_names,
            run_dir=ctx.run_dir / "self-training", num_labels=len(ctx.space.names), pad_id=ctx.pad_id,
            data_seed=ctx.data_seed, console=console, callbacks=list(ctx.callbacks), gold=data.self_training_gold,
            best_so_far=keep_from, runtime=runtime)
        seconds = time.perf_counter() - started
        improved = best is not None and state.best_step is not None
        if t.restore_best and encoded.get("validation") is not None:
            restore_weights(ctx.model, best if improved else stage_one_best, ctx.saved_names, runtime)
        self.report_["self_training"] = {"best_step": state.best_step if improved else None, "improved": improved,
                                         "steps": state.global_step, "seconds": round(seconds, 2),
                                         "history": state.history, "pseudo_labels": refreshes, "metrics_at_end": None}
        if not improved:
            console.print("  self-training never beat the first stage's best validation score: the first stage's "
                          "model is kept")
            if t.restore_best and encoded.get("validation") is not None:
                ctx.metrics = dict(measured)  # the first stage's weights are back: measured already
        # Steps are counted across both stages: self-training's step k is step `steps + k` of the run.
        ctx.best_step = ctx.steps + state.best_step if improved else ctx.best_step
        ctx.steps += state.global_step
        ctx.train_seconds += seconds

    def summary(self, ctx: RunContext) -> dict:
        return {"weak": self.report_}

"""Command line: parses arguments and calls the Python API; no logic of its own."""
from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps (default: the run's training.device)"


def _count(minimum: int = 1, why: str = ""):
    """An argparse type: a whole number of at least `minimum` (argparse names the option in its one-line error)."""
    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"got {value}; give {minimum} or more{why}")
        return value
    return count


def _number(low: float, high: float = float("inf"), low_open: bool = False, high_open: bool = False):
    """An argparse type: a finite number in [low, high] (an end excluded where open)."""
    def number(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        inside = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        if value != value or abs(value) == float("inf") or not inside:
            left, right = "(" if low_open else "[", ")" if high_open or high == float("inf") else "]"
            raise argparse.ArgumentTypeError(f"got {text}; give a finite number in {left}{low:g}, {high:g}{right}")
        return value
    return number


# --text-column and the like: a file's column names where they differ from the run's recipe (data.text_column, ...).
COLUMN_HELP = {"text": "the text", "text_pair": "text pairs: the second text", "tokens": "token-classification: the "
               "list of words", "question": "question-answering: the question", "context": "question-answering: the "
               "context", "image": "images in a table: the image paths", "label": "the labels", "tags":
               "token-classification: the tags", "answer": "question-answering: the answer"}
PREDICT_KEYS = ("text", "text_pair", "tokens", "question", "context", "image")
EVALUATE_KEYS = PREDICT_KEYS + ("label", "tags", "answer")


def _column_options(parser, keys) -> None:
    for key in keys:
        parser.add_argument(f"--{key.replace('_', '-')}-column", metavar="NAME", help=f"with --data: the column of "
                            f"{COLUMN_HELP[key]} (default: the run's data.{key}_column)")


def _columns(args, keys) -> dict[str, str]:
    return {f"{k}_column": getattr(args, f"{k}_column") for k in keys if getattr(args, f"{k}_column") is not None}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tuneforge", description="Fine-tune pre-trained models with new task heads.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="fine-tune as a recipe says")
    t.add_argument("recipe", help="recipe YAML file")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. training.lr=3e-5 method.name=head")
    t.add_argument("--resume", action="store_true", help="continue an unfinished run from its latest checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace a finished run in output.dir")
    t.add_argument("--json", action="store_true", help="print the result as JSON at the end")
    t.add_argument("--nproc", type=_count(1), metavar="N", help="train in N processes on this machine (data-parallel): "
                   "starts `torchrun --nproc_per_node N -m tuneforge train ...`; one per GPU, or CPU processes")
    t.add_argument("--seeds", type=_count(2, " (a spread needs two seeds at least; for one run, leave --seeds out)"),
                   help="train with N seeds (in OUTPUT_DIR/seed-<i>): per-seed table, mean, std "
                   "and 95%% interval")
    t.add_argument("--vary", choices=["both", "init", "data"], default="both", help="with --seeds: which seeds vary, "
                   "weight initialization (head, adapter, dropout), data order, or both (default)")
    t.add_argument("--keep", type=_count(1), help="with --seeds: early discard, continue only the best K seeds ...")
    t.add_argument("--discard-after", type=_number(0, 1, True, True), help="... judged by the validation metric after this fraction of "
                   "training (e.g. 0.3)")

    v = sub.add_parser("validate", help="check recipe, data and model without training")
    v.add_argument("recipe")
    v.add_argument("overrides", nargs="*")

    ck = sub.add_parser("check", help="show the loop's guarantees on this recipe's model and data with a few real steps "
                        "(accumulation, resume), and measure time and memory; nothing is written to output.dir")
    ck.add_argument("recipe")
    ck.add_argument("overrides", nargs="*")
    ck.add_argument("--steps", type=_count(1), default=2, help="optimizer steps before the resume point (default 2; "
                    "the probe runs twice as many)")
    ck.add_argument("--json", action="store_true", help="print the report as JSON")

    e = sub.add_parser("evaluate", help="metrics of a finished run on a labelled file")
    e.add_argument("run_dir")
    e.add_argument("--data", required=True, help="labelled file with the run's columns")
    e.add_argument("--adapter", help="evaluate with another adapter run on the same base (a run directory, its "
                   "adapter folder, or the name of a run beside RUN_DIR)")
    e.add_argument("--json", action="store_true")
    e.add_argument("--device", help=DEVICE_HELP)
    _column_options(e, EVALUATE_KEYS)

    pr = sub.add_parser("predict", help="predict with a finished run", description=(
        "Predict with a finished run: its model, or its base with the adapter and head it saved. A classification "
        "adapter is read here as it is; to use it in transformers.pipeline or AutoPeftModelForSequenceClassification, "
        "merge it first (tuneforge merge RUN --out FOLDER), since those rebuild the base with 2 labels."))
    pr.add_argument("run_dir")
    src = pr.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="file with the run's text column(s)")
    src.add_argument("--text", action="append", help="a text to classify or tag (repeatable)")
    src.add_argument("--question", action="append", help="question-answering: a question, answered from its --context "
                     "(repeatable)")
    src.add_argument("--image", action="append", metavar="PATH_OR_FOLDER",
                     help="an image, or a folder of images, to classify (repeatable; image models)")
    pr.add_argument("--text-pair", action="append", help="second text of a pair, one per --text")
    pr.add_argument("--context", action="append", help="question-answering: the text the answer of each --question is "
                    "a span of, one per --question")
    pr.add_argument("--adapter", action="append", metavar="NAME_OR_DIR",
                    help="predict with this adapter run on RUN_DIR's base model (a run directory, its adapter folder, "
                    "or the name of a run beside RUN_DIR); repeat to predict with several, switching without "
                    "reloading the base")
    pr.add_argument("--output", help="write predictions as JSONL here instead of printing (its folder must exist)")
    _column_options(pr, PREDICT_KEYS)
    pr.add_argument("--device", help=DEVICE_HELP)

    g = sub.add_parser("generate", help="generate text with a causal-lm run (streamed)")
    g.add_argument("run_dir")
    g.add_argument("--prompt", required=True, action="append", help="the prompt (a user turn when the model has a chat "
                   "template); repeatable")
    g.add_argument("--max-new-tokens", type=_count(1), default=128)
    g.add_argument("--temperature", type=_number(0), default=0.0, help="0 (default): greedy; above 0: sampling")
    g.add_argument("--top-p", type=_number(0, 1, low_open=True), default=1.0)
    g.add_argument("--top-k", type=_count(0), default=0, help="0 (default): no top-k cut")
    g.add_argument("--seed", type=int, default=0, help="sampling seed")
    g.add_argument("--no-chat-template", action="store_true", help="give the prompt as plain text (default: as the "
                   "run was trained: a user turn when its rows were rendered with the chat template)")
    g.add_argument("--no-stream", action="store_true", help="print each reply when it is complete (with several "
                   "prompts, each reply follows a '==> prompt I of N: PROMPT <==' line)")
    g.add_argument("--device", help=DEVICE_HELP)

    sc = sub.add_parser("score", help="score (prompt, response) pairs, or preference pairs, with a reward-model run")
    sc.add_argument("run_dir")
    sc.add_argument("--data", required=True, help="file with prompt and response columns, or prompt, chosen and "
                    "rejected columns (then: how often the chosen one scores higher)")
    sc.add_argument("--response-column", default="response", help="the response column (default: response)")
    sc.add_argument("--prompt-column", help="the prompt column (default: the run's data.prompt_column)")
    sc.add_argument("--output", help="write one JSON line per row here (its folder must exist)")
    sc.add_argument("--json", action="store_true", help="print the summary as JSON")
    sc.add_argument("--device", help=DEVICE_HELP)

    m = sub.add_parser("merge", help="fold a LoRA/DoRA/(IA)3 adapter into the base model, checked on held-out inputs")
    m.add_argument("run_dir")
    m.add_argument("--out", help="folder for the merged model (default: RUN_DIR/merged)")
    m.add_argument("--data", help="file of inputs to check the merge on (default: the run's validation data)")
    m.add_argument("--examples", type=_count(1), default=64, help="inputs to check the merge on (default 64)")
    m.add_argument("--atol", type=_number(0), default=1e-4, help="absolute tolerance on logits (default 1e-4)")
    m.add_argument("--rtol", type=_number(0), default=1e-4, help="tolerance relative to the largest logit (default 1e-4)")
    m.add_argument("--overwrite", action="store_true", help="replace an existing merged model")
    m.add_argument("--device", help=DEVICE_HELP)

    c = sub.add_parser("compare", help="run several methods on the same data, budget and seeds, and tabulate them")
    c.add_argument("recipe")
    c.add_argument("overrides", nargs="*", help="key=value overrides applied to every run")
    c.add_argument("--methods", required=True,
                   help="comma-separated: full, head, freeze:N, gradual, lora[:R], dora[:R], ia3, prefix[:N], "
                   "prompt[:N], bottleneck[:SIZE]; options as name:key=value:..., e.g. lora:r=16:alpha=32:lr=5e-4")
    c.add_argument("--seeds", type=_count(1), default=1, help="seeds per method: the recipe's seed, seed+1, ... (default 1)")
    c.add_argument("--out", help="study folder (default: the recipe's output.dir + '-compare')")

    tu = sub.add_parser("tune", help="search hyperparameters (any recipe key) with Optuna")
    tu.add_argument("recipe")
    tu.add_argument("overrides", nargs="*", help="key=value overrides applied to every trial")
    tu.add_argument("--space", required=True, help="YAML: recipe key -> {low, high[, log, step]} or {choices: [...]}, "
                    "optionally `when: {other.key: value}`")
    tu.add_argument("--trials", type=_count(1), default=20, help="finished trials the study should hold (default 20); a study "
                    "continued from its storage runs only the ones missing")
    tu.add_argument("--sampler", choices=["grid", "random", "tpe", "gp"], default="tpe")
    tu.add_argument("--pruner", choices=["median", "hyperband", "asha", "none"], default="median")
    tu.add_argument("--storage", help="Optuna storage URL (default: sqlite:///STUDY_DIR/study.db); postgresql://... lets "
                    "several machines work one study")
    tu.add_argument("--study", help="study name (default: the study folder's name)")
    tu.add_argument("--out", help="study folder (default: the recipe's output.dir + '-tune')")
    tu.add_argument("--seed", type=int, default=0, help="the sampler's seed")

    w = sub.add_parser("weak", help="weak supervision: analyze a recipe's labeling functions, or write its weak labels")
    wsub = w.add_subparsers(dest="weak_command", required=True)
    wa = wsub.add_parser("analyze", help="each rule's coverage, overlaps, conflicts and accuracy (against "
                         "weak.gold_column), and the label models' accuracy")
    wa.add_argument("recipe")
    wa.add_argument("overrides", nargs="*")
    wa.add_argument("--out", help="folder for analysis.{md,csv,json} and labels.jsonl (default: output.dir + '-weak')")
    wl = wsub.add_parser("label", help="label the training rows (rules + label model) and write them as JSONL")
    wl.add_argument("recipe")
    wl.add_argument("overrides", nargs="*")
    wl.add_argument("--out", required=True, help="the JSONL file to write: text, label (null: no rule voted), "
                    "probabilities, votes (its folder must exist)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; `key=value` overrides may stand anywhere among a command's options (argparse alone takes
    them only right after the recipe)."""
    parser = _parser()
    args, extras = parser.parse_known_args(argv)
    if extras and hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extras):
        args.overrides = [*args.overrides, *extras]
    elif extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}" + (" (key=value overrides go with train, validate, "
                     "compare, tune and weak)" if any("=" in x and not x.startswith("-") for x in extras) else ""))
    return args


def main(argv: list[str] | None = None) -> int:
    from .errors import TuneforgeError

    args = parse_args(argv)
    try:
        code = _dispatch(args)
        _leave_process_group()
        return code
    except TuneforgeError as e:
        rank = os.environ.get("RANK") if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else None
        print(f"error{f' (rank {rank})' if rank is not None else ''}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        how = "run the same command again to continue the study" if args.command == "tune" else \
            "the latest checkpoint is kept: continue with `tuneforge train RECIPE --resume`"
        print(f"\ninterrupted; {how}", file=sys.stderr)
        return 130


def _leave_process_group() -> None:
    """Under torchrun: every rank done, the group is closed before the process ends (a rank that exits while
    another still holds a connection open can be aborted by the collective library)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _dispatch(args) -> int:
    import tuneforge
    from .errors import TuneforgeError
    from .preparation import group_summary
    from .report import console, metrics_table

    out = console()
    if args.command == "train" and args.seeds:
        from .studies.seeds import seed_study

        if args.resume:
            out.print("a seed study always continues what it finds: finished seeds are reused, unfinished ones resumed")
        study = seed_study(args.recipe, args.seeds, vary=args.vary, keep=args.keep, discard_after=args.discard_after,
                           overrides=args.overrides, console=out)
        if args.json:
            print(json.dumps({k: str(v) for k, v in study.files.items()}, indent=1))
        return 0
    if args.command == "train" and (args.keep or args.discard_after):
        raise TuneforgeError("--keep and --discard-after go with --seeds N")
    if args.command == "train" and args.nproc:
        from .launch import launch_torchrun
        flags = [f for f, on in (("--resume", args.resume), ("--overwrite", args.overwrite), ("--json", args.json)) if on]
        return launch_torchrun(args.nproc, [args.recipe, *args.overrides, *flags])
    if args.command == "train":
        result = tuneforge.fine_tune(args.recipe, args.overrides, resume=args.resume, overwrite=args.overwrite,
                                     console=out)
        if args.json and int(os.environ.get("RANK", "0") or 0) == 0:  # one process speaks for a run
            print(json.dumps(result.to_json(), indent=1))
        return 0
    if args.command == "validate":
        report = tuneforge.validate(args.recipe, args.overrides)
        out.print("[green]recipe and data are valid[/]")
        out.print(f"  rows: {report['rows']}  labels: {report['labels'] or '(none)'}")
        if report.get("weak"):
            out.print(f"  {report['weak']['line']}")
        if report.get("teacher"):
            out.print(f"  distillation teacher: {report['teacher']}")
        if report.get("adaptation"):
            out.print(f"  {report['adaptation']}")
        out.print(f"  truncated rows: {report['truncated']}")
        written = tuneforge.load_recipe(args.recipe, args.overrides).output.dir
        where = "" if os.path.isabs(written) else f" (output.dir {written!r}: relative to the current directory)"
        out.print(f"  run folder: {os.path.abspath(written)}{where}")
        out.print(f"  layer groups: {group_summary(report['layer_groups'])}")
        out.print(f"  trainable parameters: {report['trainable_parameters']:,} of {report['total_parameters']:,}")
        for w in report["warnings"]:
            out.print(f"[yellow]warning:[/] {w}")
        return 0
    if args.command == "check":
        from .check import check
        from .report import check_table

        report = check(args.recipe, args.overrides, steps=args.steps, console=out)
        if int(os.environ.get("RANK", "0") or 0) == 0:  # under torchrun: one process speaks for the check
            if args.json:
                print(json.dumps(report.to_json(), indent=1))
            else:
                out.print(check_table(report))
        return 0 if report.passed else 1
    if args.command == "evaluate":
        metrics = _with_column_options(lambda: tuneforge.evaluate(
            args.run_dir, args.data, adapter=args.adapter, device=args.device, columns=_columns(args, EVALUATE_KEYS)))
        if args.json:
            print(json.dumps(metrics, indent=1))
        else:
            out.print(metrics_table({os.path.basename(args.data): metrics}))
        return 0
    if args.command == "predict":
        _check_predict_inputs(args)
        predictor = tuneforge.Predictor(args.run_dir, device=args.device)
        columns = _columns(args, PREDICT_KEYS)
        names = [predictor.add_adapter(a) for a in args.adapter] if args.adapter else [predictor.active]
        records = []
        for name in names:
            if name is not None:
                predictor.use(name)
            if args.question:  # (a question and its context are the model's two texts)
                batch = predictor.predict(texts=args.question, text_pairs=args.context or [])
            else:
                batch = _with_column_options(lambda: predictor.predict(
                    data=args.data, texts=args.text, text_pairs=args.text_pair, images=args.image, columns=columns))
            records.extend({**r, "adapter": name} if len(names) > 1 else r for r in batch)
        if args.output:
            from .inference import write_predictions
            write_predictions(records, args.output)
            out.print(f"{len(records)} predictions written to {args.output}")
        else:
            for r in records:
                print(json.dumps(r))
        return 0
    if args.command == "generate":
        from .generation import GenerationOptions, Generator

        generator = Generator(args.run_dir, args.device)
        options = GenerationOptions(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                                    top_k=args.top_k, seed=args.seed,
                                    chat_template=False if args.no_chat_template else None)
        for i, prompt in enumerate(args.prompt, 1):
            if len(args.prompt) > 1:  # several replies: each says which prompt it answers
                print(("\n" if i > 1 else "") + f"==> prompt {i} of {len(args.prompt)}: {prompt} <==", flush=True)
            text = generator(prompt, options, stream=not args.no_stream)
            if args.no_stream:
                print(text)
        return 0
    if args.command == "score":
        from .inference import check_output_file, require_run
        from .scoring import score

        require_run(args.run_dir)
        if args.output:
            check_output_file(args.output, "--output")
        records, summary = score(args.run_dir, args.data, args.response_column, prompt_column=args.prompt_column,
                                 device=args.device)
        if args.output:
            from .inference import write_predictions
            write_predictions(records, args.output)
            out.print(f"{len(records)} scores written to {args.output}")
        elif not args.json:
            for r in records:
                print(json.dumps(r))
        if args.json:
            print(json.dumps(summary, indent=1))
        else:
            out.print("  ".join(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for k, v in summary.items()))
        return 0
    if args.command == "merge":
        tuneforge.merge(args.run_dir, args.out, overwrite=args.overwrite, data=args.data, examples=args.examples,
                        atol=args.atol, rtol=args.rtol, console=out, device=args.device)
        return 0
    if args.command == "tune":
        from .studies.tune import tune

        result = tune(args.recipe, args.space, args.trials, sampler=args.sampler, pruner=args.pruner,
                      storage=args.storage, study_name=args.study, study_dir=args.out, overrides=args.overrides,
                      seed=args.seed, console=out)
        if result.best_recipe:
            out.print(f"best: validation {result.metric} {result.best_value:.4g} with {result.best_params}; recipe "
                      f"{result.best_recipe} (tuneforge train {result.best_recipe})")
        else:
            out.print("[yellow]no trial completed[/]: see the trials table and each trial's run directory")
        return 0
    if args.command == "compare":
        tuneforge.compare(args.recipe, args.methods, seeds=args.seeds, overrides=args.overrides, study_dir=args.out,
                          console=out)
        return 0
    if args.command == "weak" and args.weak_command == "analyze":
        from .weak.api import analyze_weak
        analyze_weak(args.recipe, args.overrides, args.out, console=out)
        return 0
    if args.command == "weak":
        from .inference import check_output_file
        from .weak.api import weak_labels
        check_output_file(args.out, "--out")
        data = weak_labels(args.recipe, args.overrides, args.out)
        summary = data.summary()
        out.print(f"{summary['rows']} rows written to {args.out}: {summary['labelled']} labelled, "
                  f"{summary['unlabelled']} without a label")
        return 0
    raise AssertionError(args.command)


def _check_predict_inputs(args) -> None:
    """What predict is given, checked before any model loads: no empty text, an --output it can write."""
    from .errors import DataError
    from .inference import blank_texts, check_output_file

    problems = [p for option in ("text", "text_pair", "question", "context")
                for p in blank_texts(getattr(args, option), f"--{option.replace('_', '-')}")]
    if problems:
        raise DataError(problems)
    if args.output:
        check_output_file(args.output, "--output")


def _with_column_options(call):
    """predict's and evaluate's own options in their messages: a missing column is named with --text-column and the
    like (they cannot take data.text_column)."""
    from .errors import DataError
    from .inference import EVALUATE_COLUMNS

    try:
        return call()
    except DataError as e:
        problems = list(e.problems)
        for key in EVALUATE_COLUMNS:
            option = f"--{key.replace('_', '-')} NAME"
            problems = [p.replace(f"set data.{key}", f"give {option}").replace(f"data.{key}", option) for p in problems]
        if problems == e.problems:
            raise
        raise DataError(problems) from None


if __name__ == "__main__":
    sys.exit(main())

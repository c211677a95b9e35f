"""The run directory: made, marked, checked and replaced only by tuneforge; the files a run writes into it."""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Optional

from . import runlock
from .engine.checkpoint import atomic_folder, list_checkpoints
from .errors import RecipeError, RunDirError
from .recipe import Recipe, load_recipe

RUN_MARKER = ".tuneforge-run"  # written by tuneforge into every run directory; only such folders are ever deleted
RANKS_FILE = ".tuneforge-ranks"  # a token of rank 0's: the other ranks find it where output.dir is shared
TRASH = ".tuneforge-replaced"  # an old run being removed (--overwrite): moved here first, then deleted
OWN_FILES = (RUN_MARKER, RANKS_FILE, TRASH)
# Keys that may differ on --resume: where the run folder is (it may have been moved) and how progress is shown.
RESUME_MAY_DIFFER = ("output.dir", "training.progress", "training.nonfinite", "training.keep_checkpoints",
                     "training.report_to")


def prepare_run_dir(run_dir: Path, recipe: Recipe, resume: bool, overwrite: bool, console,
                     keep: tuple[str, ...] = ()) -> Optional[Path]:
    """Return the checkpoint to resume from (or None); never destroy a finished run without `overwrite`,
    and never delete a folder tuneforge did not create. `keep`: folders of an earlier stage of this same run
    (the adaptation stage), left in place when the run starts over. Takes the folder's lock (runlock), held until
    the run ends."""
    runlock.acquire(run_dir)
    check_run_dir(run_dir, overwrite, keep)
    _finish_removal(run_dir)
    if holds_a_run(run_dir, keep):
        checkpoints = list_checkpoints(run_dir / "checkpoints")
        if overwrite:
            remove_run(run_dir, keep)
        elif resume and checkpoints:
            differ = recipe_differences(saved_recipe(run_dir), recipe)
            if differ:
                raise RunDirError(f"{run_dir}: --resume with a recipe that differs from the run's recipe.yaml in "
                                  f"{'; '.join(differ[:8])}{' ...' if len(differ) > 8 else ''}. Resume with the "
                                  "recipe it was started with, or start over with --overwrite")
            return checkpoints[-1]
        elif checkpoints:
            raise RunDirError(f"{run_dir} holds an unfinished run (latest checkpoint {checkpoints[-1].name}); "
                              "pass --resume to continue it or --overwrite to start over")
        else:
            # A run stopped before its first checkpoint: nothing to continue from.
            console.print(f"{run_dir}: an earlier run stopped before its first checkpoint; starting over")
            remove_run(run_dir, keep)
    mark_run_dir(run_dir)
    return None


def holds_a_run(run_dir: Path, keep: tuple[str, ...] = ()) -> bool:
    return run_dir.exists() and any(_of_the_run(p, keep) for p in run_dir.iterdir())


def _of_the_run(p: Path, keep: tuple[str, ...]) -> bool:
    """Whether `p` (in a run folder) is part of the run, not tuneforge's own bookkeeping: the marker, the ranks'
    token, the trash, and the lock files of stages' folders inside it."""
    return p.name not in (*keep, *OWN_FILES) and not p.name.endswith(runlock.LOCK_SUFFIX)


def check_run_dir(run_dir: Path, overwrite: bool, keep: tuple[str, ...] = ()) -> None:
    """Refuse, before anything is written or removed, a file, a non-empty folder tuneforge did not make, and a
    finished run without `overwrite`."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"output.dir {str(run_dir)!r} is a file; choose a folder")
    runlock.refuse_if_locked(run_dir)  # a run that is still training is neither resumed nor replaced
    if not holds_a_run(run_dir, keep):
        return
    if not (run_dir / RUN_MARKER).exists():
        raise RunDirError(f"output.dir {str(run_dir)!r} is not empty and was not made by tuneforge "
                          f"(no {RUN_MARKER} file); nothing in it is touched, even with --overwrite. "
                          "Choose another output.dir")
    if (run_dir / "summary.json").exists() and not overwrite:
        raise RunDirError(f"{run_dir} holds a finished run; pass --overwrite (overwrite=True) to replace it, "
                          "or set output.dir to a new folder")


def check_writable(run_dir: Path) -> None:
    """Refuse, before anything loads or is written, an output.dir that cannot be made or written: the folder and
    where it exists (its lock file goes beside it, or into it where the parent is not writable), else its nearest
    existing parent, where it will be made."""
    run_dir = Path(run_dir).absolute()
    place = run_dir
    while not place.exists() and place != place.parent:
        place = place.parent
    if place != run_dir and not place.is_dir():
        raise RunDirError(f"output.dir {str(run_dir)!r}: {place} is a file, so the folder cannot be made in it; "
                          "choose another output.dir")
    if not os.access(place, os.W_OK | os.X_OK):
        raise RunDirError(f"output.dir {str(run_dir)!r}: {place} is not writable by this user; choose a folder "
                          "you can write (e.g. output.dir=runs/NAME on the command line)")


@contextlib.contextmanager
def writing(run_dir: Path):
    """What the operating system refuses while a run folder is prepared (a place this user may not write, a
    read-only or full disk) as one line naming the path, not a traceback."""
    try:
        yield
    except OSError as e:
        raise RunDirError(f"output.dir {str(run_dir)!r}: cannot write there ({e.strerror or e}: "
                          f"{e.filename or run_dir}); choose another output.dir") from None


def mark_run_dir(run_dir: Path) -> None:
    """Create the folder with the marker that lets tuneforge (and only it) remove what is inside later."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_MARKER).write_text("a tuneforge run directory\n")


def remove_run(run_dir: Path, keep: tuple[str, ...]) -> None:
    """Empty a run folder (but `keep`) so that a kill at any instant leaves a folder tuneforge still owns: the marker
    is never removed, and each entry is first moved (one rename, atomic) into TRASH, then the trash is deleted. Until
    then, what is still in place is whole (a checkpoint is never half deleted), and the next start finishes the
    removal."""
    trash = run_dir / TRASH
    trash.mkdir(exist_ok=True)
    # Checkpoints first: a run cut short here is a finished run still (--overwrite again), never a half-removed one
    # that --resume would take.
    entries = sorted((p for p in run_dir.iterdir() if _of_the_run(p, keep)),
                     key=lambda p: p.name != "checkpoints")
    for i, p in enumerate(entries):
        os.replace(p, trash / f"{i}-{p.name}")
    _finish_removal(run_dir)


def _finish_removal(run_dir: Path) -> None:
    trash = run_dir / TRASH
    if trash.exists():
        shutil.rmtree(trash)


def recipe_differences(saved: Optional[Recipe], recipe: Recipe) -> list[str]:
    """`key: saved value -> new value` for each recipe key that differs (not those of RESUME_MAY_DIFFER)."""
    if saved is None:
        return ["recipe.yaml (missing or unreadable in the run folder)"]
    old, new = _flatten(saved.model_dump(mode="json")), _flatten(recipe.model_dump(mode="json"))
    return [f"{k}: {old.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k) and k not in RESUME_MAY_DIFFER]


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def saved_recipe(run_dir: Path) -> Optional[Recipe]:
    """The recipe a run was started with (compared as values, so a newer version's extra defaults do not count)."""
    try:
        return load_recipe(run_dir / "recipe.yaml")
    except (RecipeError, OSError):
        return None


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def check_shared_storage(run_dir: Path, runtime, resume_from, recipe) -> None:
    """Whether every rank sees rank 0's run folder (one machine, or storage the machines share). Needed to resume
    (every rank reads the checkpoint), for sharded checkpoints (every rank writes its part) and for an adaptation
    stage (the task starts from its folder); without it those are refused on every rank alike."""
    import secrets

    token = runtime.on_main(lambda: _write_token(run_dir, secrets.token_hex(8)))
    file = run_dir / RANKS_FILE
    sees = file.exists() and file.read_text() == token
    if all(runtime.gather(sees)):
        return
    needs = [why for why, on in (("--resume", resume_from is not None), ("training.distributed: fsdp", runtime.fsdp),
                                 ("adapt", recipe.adapt is not None)) if on]
    if needs:
        raise RunDirError(f"output.dir {str(run_dir)!r} is not on storage every machine of the run sees (a rank on "
                          f"another machine cannot find rank 0's files), and {', '.join(needs)} needs it; put "
                          "output.dir on a shared file system")


def _write_token(run_dir: Path, token: str) -> str:
    (run_dir / RANKS_FILE).write_text(token)
    return token


def save_model(model, tokenizer, model_dir: Path, carried: Optional[dict] = None, state: Optional[dict] = None,
               files: Optional[dict[str, str]] = None) -> int:
    """Hugging Face format (config with id2label/label2id, model.safetensors, tokenizer), written then renamed.
    `carried`: tensors the model has no place for but a later fine-tune should find (an adapted encoder's pooler).
    `state`: the weights gathered from a sharded model. `files`: name -> text of further files written inside the
    folder before it takes its name. Returns the weights' size in bytes."""
    for p in model.parameters():  # saved models should load as ordinary trainable models
        p.requires_grad_(True)
    with atomic_folder(model_dir) as tmp:
        if state is None:
            model.save_pretrained(tmp, safe_serialization=True)
        else:
            from .engine.sharding import save_gathered
            save_gathered(model, state, tmp)
        tokenizer.save_pretrained(tmp)
        for name, text in (files or {}).items():
            (Path(tmp) / name).write_text(text)
        if carried:
            from safetensors.torch import load_file, save_file
            file = Path(tmp) / "model.safetensors"
            save_file({**load_file(str(file)), **{k: v.contiguous() for k, v in carried.items()}}, str(file),
                      metadata={"format": "pt"})
    return sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))

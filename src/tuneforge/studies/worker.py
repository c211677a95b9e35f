"""One study run in its own process, so that its peak memory is its own: `python -m tuneforge.studies.worker JOB`.

JOB is a JSON file {"recipe": {...}, "result": "path.json"} (optionally "stop_at": a fraction of training at which
a seed study's early discard evaluates and stops); the result file gets the run's RunResult plus `peak_rss_mb` (the
process's peak resident memory) and `gpu` (the GPU a study placed it on, or null), or {"discarded": metrics}.
"""
from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main(job_path: str) -> int:
    from ..errors import TuneforgeError
    from ..report import console
    from ..run import fine_tune
    from .placement import TRIAL_GPU
    from .seeds import DiscardPoint, StopAt

    job = json.loads(Path(job_path).read_text())
    if "tune" in job:  # one of a search's workers on its GPU, sharing the study's storage with the others
        from .tune import tune
        try:
            tune(**job["tune"], console=console())
        except TuneforgeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    callbacks = [StopAt(job["stop_at"])] if job.get("stop_at") else []
    try:
        out = fine_tune(job["recipe"], resume=True, callbacks=callbacks, console=console()).to_json()
    except DiscardPoint as stop:
        out = {"discarded": {"step": stop.step, "metrics": stop.metrics}}
    except TuneforgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # kB on Linux
    out["gpu"] = os.environ.get(TRIAL_GPU)
    tmp = Path(job["result"] + ".tmp")
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, job["result"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

"""One study run in its own process, so that its peak memory is its own: `python -m tuneforge.studies.worker JOB`.

JOB is a JSON file {"recipe": {...}, "result": "path.json"}; the result file gets the run's RunResult plus
`peak_rss_mb` (the process's peak resident memory).
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

    job = json.loads(Path(job_path).read_text())
    try:
        result = fine_tune(job["recipe"], resume=True, console=console())
    except TuneforgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = result.to_json()
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # kB on Linux
    tmp = Path(job["result"] + ".tmp")
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, job["result"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

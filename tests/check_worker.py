"""A torchrun worker for tests/test_check.py: `tuneforge check ARGS`, with a planted defect when the first argument
asks for one (so that the check is shown to fail in N processes too)."""
import sys

import tuneforge.engine.loop as loop
from tuneforge.cli import main

if sys.argv[1] == "--plant-every-rank-takes-the-whole-step":
    loop.share_of = lambda step_batches, runtime: list(step_batches)  # no dealing out: each rank computes it all
    del sys.argv[1]
sys.exit(main(sys.argv[1:]))

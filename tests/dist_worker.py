"""Started by torchrun in the distributed tests: trains a recipe (JSON; or a list of recipes, in the same
processes) with a planted event, as a real fault would
happen. DIST_KILL_AT=K: rank 0 is SIGKILLed right after optimizer step K; DIST_FAIL_AT=K with DIST_FAIL_RANK=R:
rank R raises an error after step K."""
import json
import os
import signal
import sys

import tuneforge
from tuneforge.errors import TuneforgeError


class Fault:
    def __init__(self, kill_at: int, fail_at: int, fail_rank: int):
        self.kill_at, self.fail_at, self.fail_rank = kill_at, fail_at, fail_rank

    def on_step_end(self, loop):
        step, rank = loop.state.global_step, loop.runtime.rank
        if step == self.kill_at and rank == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        if step == self.fail_at and rank == self.fail_rank:
            raise TuneforgeError(f"planted failure on rank {rank} after step {step}")


if __name__ == "__main__":
    recipes = json.loads(open(sys.argv[1]).read())  # one recipe, or a list trained one after another
    fault = Fault(int(os.environ.get("DIST_KILL_AT", -1)), int(os.environ.get("DIST_FAIL_AT", -1)),
                  int(os.environ.get("DIST_FAIL_RANK", -1)))
    try:
        for recipe in recipes if isinstance(recipes, list) else [recipes]:
            tuneforge.fine_tune(recipe, resume="--resume" in sys.argv, callbacks=[fault])
        import torch.distributed as dist
        dist.barrier()
        dist.destroy_process_group()
    except TuneforgeError as e:
        print(f"error (rank {os.environ.get('RANK')}): {e}", file=sys.stderr)
        sys.exit(2)

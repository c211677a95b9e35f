"""TensorBoard: scalars in the run folder (<run>/tensorboard, a stage's loop in its own folder), when the tensorboard
package is installed; without it, the default training.report_to ["tensorboard"] quietly logs nothing there.
It takes no parameters or artefacts: the recipe and the model are in the run folder beside it."""
from __future__ import annotations

import importlib.util
from pathlib import Path


class TensorBoardLogger:
    """The training loss at logging steps, the learning rate at every step, every evaluation's metrics."""

    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(log_dir))

    def on_step_end(self, loop):
        s = loop.state
        if loop.logged:  # the loss of the logging window (training.log_every)
            self.writer.add_scalar("train/loss", loop.last_loss, s.global_step)
        self.writer.add_scalar("train/lr", loop.scheduler.get_last_lr()[-1], s.global_step)

    def on_evaluate(self, loop, metrics):
        for k, v in metrics.items():
            self.writer.add_scalar(f"validation/{k}", v, loop.state.global_step)

    def on_train_end(self, loop):
        self.writer.close()

    on_train_abort = on_train_end  # (training stopped by an error: the same clean-up)


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None

"""The engine: one training loop, optimizer and schedule, evaluation, checkpoints, callbacks."""

"""Objectives beyond a task's plain loss: each a module of losses with hand-checkable maths."""

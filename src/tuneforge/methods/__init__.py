"""Methods: which parameters learn, and at which learning rate.

Each method is a plan: `frozen_groups(stage)` says which layer groups are frozen at an unfreezing stage
(stage 0 for methods that never change), and `patterns` freeze parameters by name. One entry per
method in METHODS; the plan is applied to a model with `apply_plan`.
"""
from .freezing import (METHODS, FreezePlan, apply_plan, build_plan, count_parameters, freeze_batchnorm_statistics,
                       set_frozen_modules_eval)
from .param_groups import build_param_groups

__all__ = ["METHODS", "FreezePlan", "apply_plan", "build_plan", "count_parameters", "set_frozen_modules_eval",
           "freeze_batchnorm_statistics",            "build_param_groups"]

"""Knowledge distillation: a teacher's soft targets (and optionally hidden states) train a smaller student."""
from .loss import hidden_cosine_sum, layer_map, soft_target_kl_sum
from .task import DistillationTask
from .teacher import Teacher, load_teacher, teacher_outputs

__all__ = ["DistillationTask", "Teacher", "hidden_cosine_sum", "layer_map", "load_teacher", "soft_target_kl_sum",
           "teacher_outputs"]

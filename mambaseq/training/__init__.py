"""Training concerns (optimizers, schedules; Lightning modules as tasks add them). Never in models/."""

from .optim import make_optimizer, make_scheduler, parameter_groups, warmup_cosine

__all__ = ["make_optimizer", "make_scheduler", "parameter_groups", "warmup_cosine"]

"""SeqIO registrations for ptjf (installed as `ptjf.tasks`).

Importing this package registers the embedded Bible tasks and mixtures (no data is read until
a task is used) and exposes the functions to register your own.
"""

from . import bible  # noqa: F401  (registers the embedded tasks)
from .registration import (
    MixtureSpec,
    TaskInfo,
    derive_mixture,
    get_task_or_mixture,
    make_lm_task,
    make_translation_task,
    mixture_rates,
    mixture_spec,
    problem_vocabulary,
    register_lm_task,
    register_mixture,
    register_translation_task,
    task_info,
    task_size,
)

__all__ = [
    "MixtureSpec",
    "TaskInfo",
    "derive_mixture",
    "get_task_or_mixture",
    "make_lm_task",
    "make_translation_task",
    "mixture_rates",
    "mixture_spec",
    "problem_vocabulary",
    "register_lm_task",
    "register_mixture",
    "register_translation_task",
    "task_info",
    "task_size",
]

"""SeqIO registrations for ptjf (installed as `ptjf.tasks`).

Importing this package registers the embedded Bible tasks and mixtures, the WMT problems
(`ptjf.tasks.wmt`) and the mC4 languages (`ptjf.tasks.mc4`) — no data is read until a task is
used — and exposes the functions to register your own.
"""

# Importing the modules registers their tasks: bible's embedded data, WMT and mC4 over TFDS.
from . import bible, mc4, mixtures, wmt  # noqa: F401
from .mixtures import (
    MixtureSpec,
    derive_mixture,
    mixture_rates,
    mixture_spec,
    register_mixture,
)
from .registration import (
    TaskInfo,
    TfdsSource,
    get_task_or_mixture,
    make_lm_task,
    make_span_corruption_task,
    make_translation_task,
    problem_vocabulary,
    register_lm_task,
    register_translation_task,
    task_info,
    task_size,
    tfds_data_dir,
)

__all__ = [
    "MixtureSpec",
    "TaskInfo",
    "TfdsSource",
    "derive_mixture",
    "get_task_or_mixture",
    "make_lm_task",
    "make_span_corruption_task",
    "make_translation_task",
    "mixture_rates",
    "mixture_spec",
    "problem_vocabulary",
    "register_lm_task",
    "register_mixture",
    "register_translation_task",
    "task_info",
    "task_size",
    "tfds_data_dir",
]

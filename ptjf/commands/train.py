"""`ptjf train` (or `python -m ptjf.train`): parse gin the T5X way, then run the plan.

    ptjf train --gin_file=runs/ptjf.gin --gin_file=models/tiny.gin \
        --gin.MODEL_DIR=/tmp/run --gin.HIGH_RESOURCE_TASK="'bible_translate_en_fr'" ...

Gin files are found on ptjf's search path (the checkout's or the installed `gin_configs/`, the
working directory, `$PTJF_GIN_PATH`). The trainer saves the whole config as `MODEL_DIR/config.gin`.

Several processes (hosts) run the same command; on Cloud TPU pods and under SLURM they find each
other by themselves, elsewhere add `--coordinator_address=HOST:PORT --process_count=N
--process_index=I` (see `ptjf.runtime.distributed`).
"""

from __future__ import annotations

from collections.abc import Sequence

from ptjf import config as gin_config
from ptjf.errors import ConfigError
from ptjf.runtime import compilation_cache


def run(gin_files: Sequence[str], gin_bindings: Sequence[str]):
    """Parses the gin files and bindings, then calls the gin-configured `train()`.

    A multi-process run joins its other processes first (`ptjf.runtime.distributed.initialize`, which
    `ptjf train` calls from its flags).
    """
    from ptjf.training import trainer

    compilation_cache.enable()

    if not gin_files:
        raise ConfigError(
            "No --gin_file given: name a run file and a model file, e.g. "
            "--gin_file=runs/ptjf.gin --gin_file=models/tiny.gin."
        )
    gin_config.parse_gin(gin_files, gin_bindings)
    return trainer.train()

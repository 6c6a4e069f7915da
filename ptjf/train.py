"""`ptjf train` / `python -m ptjf.train`: parse gin the T5X way, then run the plan.

    ptjf train --gin_file=runs/ptjf.gin --gin_file=models/tiny.gin \
        --gin.MODEL_DIR=/tmp/run --gin.HIGH_RESOURCE_TASK="'bible_translate_en_fr'" ...

Gin files are found on ptjf's search path (the checkout's or the installed `gin_configs/`, the
working directory, `$PTJF_GIN_PATH`). The trainer saves the whole config as `MODEL_DIR/config.gin`.

Several processes (hosts) run the same command; on Cloud TPU pods and under SLURM they find each
other by themselves, elsewhere add `--coordinator_address=HOST:PORT --process_count=N
--process_index=I` (see `ptjf.distributed`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from ptjf import config as gin_config
from ptjf.errors import ConfigError


def enable_compilation_cache() -> None:
    """Keeps compiled steps under PTJF_DATA_DIR so a rerun (resume, the next sweep point)
    starts in seconds; a cache the user configured (JAX_COMPILATION_CACHE_DIR) wins."""
    import os

    import jax

    from ptjf.data.vocabularies import data_dir

    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(data_dir() / "jax-cache"))
    # Every compile, whichever directory: the init, eval and checkpoint-fingerprint functions
    # compile in under a second each, but a launch pays all of them before its first step.
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def run(gin_files: Sequence[str], gin_bindings: Sequence[str]):
    """Parses the gin files and bindings, then calls the gin-configured `train()`.

    A multi-process run joins its other processes first (`ptjf.distributed.initialize`, which
    `ptjf train` calls from its flags).
    """
    from ptjf.training import trainer

    enable_compilation_cache()

    if not gin_files:
        raise ConfigError(
            "No --gin_file given: name a run file and a model file, e.g. "
            "--gin_file=runs/ptjf.gin --gin_file=models/tiny.gin."
        )
    gin_config.parse_gin(gin_files, gin_bindings)
    return trainer.train()


def main(argv: Sequence[str] | None = None) -> int:
    from ptjf.cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())

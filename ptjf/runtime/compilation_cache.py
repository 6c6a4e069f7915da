"""JAX's persistent compilation cache under PTJF_DATA_DIR: a rerun (a resume, the next sweep
point, `ptjf eval`) loads its compiled steps instead of compiling them again."""

from __future__ import annotations

import os


def enable() -> None:
    """Keeps compiled steps under PTJF_DATA_DIR/jax-cache; a cache the user configured
    (JAX_COMPILATION_CACHE_DIR) wins."""
    import jax

    from ptjf.data.vocabularies import data_dir

    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(data_dir() / "jax-cache"))
    # Every compile, whichever directory: the init, eval and checkpoint-fingerprint functions
    # compile in under a second each, but a launch pays all of them before its first step.
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

"""TensorFlow for the input pipeline and summaries only, kept off the accelerators.

TensorFlow reserves most of a GPU's memory the first time it touches one, which would take it
from JAX; SeqIO pipelines and TensorBoard summaries need no accelerator. Every ptjf module that
uses TensorFlow imports it through `tensorflow_on_cpu()` before building anything.
"""

from __future__ import annotations

import contextlib
import functools


@functools.cache
def tensorflow_on_cpu():
    import tensorflow as tf

    for kind in ("GPU", "TPU"):
        # RuntimeError: TensorFlow's devices are already initialised; ValueError: no such kind.
        with contextlib.suppress(RuntimeError, ValueError):
            tf.config.set_visible_devices([], kind)
    return tf

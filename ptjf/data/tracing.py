"""Building tf.data pipelines without AutoGraph where it is not needed: a faster start.

`Dataset.map` traces its function when the pipeline is built, and first converts it (and every
Python function it calls: SeqIO's preprocessors, the tokenizer's methods) with AutoGraph, which
rewrites Python control flow over tensors into graph ops. For the Bible mixture that conversion
was 1.7 s of Python before the first batch, holding the interpreter lock that tracing the model
needs at the same time; yet only code with Python `if`, `for` or `while` over tensor values
needs it. SeqIO's tokenizing, trimming and EOS preprocessors and ptjf's own maps do not; SeqIO's
packing loop does (0.3 s of the 1.7 s).

`without_autograph(build)` builds with AutoGraph off (`tf.autograph.experimental.do_not_convert`
sets the ambient status that `Dataset.map` reads). A function that needs AutoGraph cannot be
traced without it: it raises (a tensor used as a Python bool or iterable, `range` of a tensor),
it does not trace to something else; so on any error the pipeline is built again, converted as
before, and a task that needs AutoGraph costs one failed attempt and nothing more. What is
lost without AutoGraph is `print` of a tensor inside a map function (it prints once, when
traced, instead of per element); use `tf.print` there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import tensorflow as tf

log = logging.getLogger(__name__)

T = TypeVar("T")


def without_autograph(build: Callable[[], T], what: str = "pipeline") -> T:
    """`build()` with AutoGraph off; again with it on if that fails (see the module docstring).

    An error that is not AutoGraph's to fix is raised by the second attempt, as it would be
    without this function.
    """
    try:
        return tf.autograph.experimental.do_not_convert(build)()
    except Exception as e:  # any failure: retried with AutoGraph
        log.debug("%s needs AutoGraph (%s: %s); building it converted", what, type(e).__name__, e)
        return build()

"""Pipelines built without AutoGraph, and the fallback for map functions that need it."""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.autograph.core import ag_ctx

from ptjf.data.tracing import without_autograph


def _elements(ds: tf.data.Dataset) -> list:
    return [np.asarray(x).tolist() for x in ds.as_numpy_iterator()]


def _needs_autograph(x):
    # Python control flow on a tensor value: only AutoGraph can trace this.
    if x % 2 == 0:
        return x * 10
    return x


def test_builds_with_autograph_off_when_nothing_needs_it():
    statuses = []

    def build():
        statuses.append(ag_ctx.control_status_ctx().status)
        return tf.data.Dataset.range(4).map(lambda x: x + 1)

    ds = without_autograph(build)
    assert statuses == [ag_ctx.Status.DISABLED]
    assert _elements(ds) == [1, 2, 3, 4]


def test_a_map_that_needs_autograph_is_built_converted_with_the_same_elements():
    calls = []

    def build():
        calls.append(ag_ctx.control_status_ctx().status)
        return tf.data.Dataset.range(5).map(_needs_autograph)

    # Without AutoGraph the map cannot be traced at all: the error is loud, not a silent change.
    with pytest.raises(tf.errors.OperatorNotAllowedInGraphError):
        tf.autograph.experimental.do_not_convert(build)()
    calls.clear()
    ds = without_autograph(build)
    assert calls == [ag_ctx.Status.DISABLED, ag_ctx.Status.UNSPECIFIED]
    assert _elements(ds) == _elements(tf.data.Dataset.range(5).map(_needs_autograph))
    assert _elements(ds) == [0, 1, 20, 3, 40]


def test_an_error_autograph_cannot_fix_is_raised_from_the_converted_attempt():
    attempts = []

    def build():
        attempts.append(1)
        return tf.data.Dataset.range(3).map(lambda x: {"a": x}["b"])

    with pytest.raises(KeyError, match="b"):
        without_autograph(build)
    assert len(attempts) == 2

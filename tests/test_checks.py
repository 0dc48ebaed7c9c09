"""samix._checks: argument checks with one message format, '<what> <name> must be <expected>, got <value!r>'."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from samix._checks import (argument_error, check_bool, check_choice, check_class_indices, check_int, check_number,
                           check_probability, is_int, is_number)


def test_check_number_accepts_and_converts():
    assert check_number("alpha", 1) == 1.0 and isinstance(check_number("alpha", 1), float)
    assert check_number("alpha", np.float32(0.5), low=0.0, low_open=True) == 0.5
    assert check_number("x", np.int64(3), low=3, high=3) == 3.0
    assert check_number("x", 0.0, low=0.0) == 0.0
    assert check_number("x", 1.0, high=1.0) == 1.0


@pytest.mark.parametrize("value, kwargs, exc, message", [
    (True, {}, TypeError, "alpha must be a number, got True"),
    ("1", {}, TypeError, "alpha must be a number, got '1'"),
    (None, {}, TypeError, "alpha must be a number, got None"),
    (float("nan"), {}, ValueError, "alpha must be finite, got nan"),
    (math.inf, {"low": 0.0}, ValueError, "alpha must be finite, got inf"),
    (0.0, {"low": 0.0, "low_open": True}, ValueError, "alpha must be > 0.0, got 0.0"),
    (-1, {"low": 0.0}, ValueError, "alpha must be >= 0.0, got -1"),
    (1.5, {"high": 1.0}, ValueError, "alpha must be <= 1.0, got 1.5"),
    (1.0, {"high": 1.0, "high_open": True}, ValueError, "alpha must be < 1.0, got 1.0"),
])
def test_check_number_rejects_with_the_name(value, kwargs, exc, message):
    with pytest.raises(exc) as err:
        check_number("alpha", value, **kwargs)
    assert str(err.value) == message


def test_prefix_and_error_type_are_the_callers():
    with pytest.raises(ValueError) as err:
        check_number("eta", "x", what="algorithm option", type_error=ValueError)
    assert str(err.value) == "algorithm option eta must be a number, got 'x'"
    with pytest.raises(ValueError, match="^mixer option mode must be one of"):
        check_choice("mode", "pixel", ("batch", "elem"), what="mixer option")
    err = argument_error("scope", "a pair", 3, what="mixer option", error=TypeError)
    assert isinstance(err, TypeError) and str(err) == "mixer option scope must be a pair, got 3"


def test_check_probability():
    assert check_probability("prob", 0) == 0.0 and check_probability("prob", 1) == 1.0
    for bad in (-0.1, 1.1, float("nan")):
        with pytest.raises(ValueError, match="prob"):
            check_probability("prob", bad)


def test_check_int():
    assert check_int("n", 3) == 3 and check_int("n", np.int64(2), low=1) == 2
    assert type(check_int("n", np.int64(2))) is int
    assert check_int("n", None, low=1, none_ok=True) is None
    cases = [
        (dict(value=True, low=1), TypeError, "n must be an int, got True"),
        (dict(value=2.0, low=1), TypeError, "n must be an int, got 2.0"),
        (dict(value=None, low=1), TypeError, "n must be an int, got None"),
        (dict(value="x", low=1, none_ok=True), TypeError, "n must be an int or None, got 'x'"),
        (dict(value=0, low=1), ValueError, "n must be a positive int, got 0"),
        (dict(value=-1, low=0), ValueError, "n must be a non-negative int, got -1"),
        (dict(value=7, low=8), ValueError, "n must be an int >= 8, got 7"),
        (dict(value=5, low=0, high=4), ValueError, "n must be an int in [0, 4], got 5"),
        (dict(value=5, high=4), ValueError, "n must be an int <= 4, got 5"),
        (dict(value=0, low=1, none_ok=True), ValueError, "n must be a positive int or None, got 0"),
        (dict(value=2.5, low=1, type_error=ValueError), ValueError, "n must be an int, got 2.5"),
    ]
    for kwargs, exc, message in cases:
        value = kwargs.pop("value")
        with pytest.raises(exc) as err:
            check_int("n", value, **kwargs)
        assert str(err.value) == message


def test_check_choice_and_bool():
    assert check_choice("reduction", "sum", ("mean", "sum")) == "sum"
    with pytest.raises(ValueError) as err:
        check_choice("reduction", "max", ("mean", "sum"))
    assert str(err.value) == "reduction must be one of ['mean', 'sum'], got 'max'"
    with pytest.raises(ValueError, match="reduction"):
        check_choice("reduction", ["mean"], {"mean", "sum"})  # unhashable value: rejected, not a crash
    assert check_bool("flip", False) is False
    for bad in (1, 0, "yes", None, np.bool_(True)):
        with pytest.raises(TypeError, match="^flip must be a bool, got"):
            check_bool("flip", bad)


def test_predicates():
    assert is_number(1) and is_number(1.5) and is_number(np.float16(1)) and is_number(np.int8(1))
    assert not any(is_number(v) for v in (True, np.bool_(False), "1", None, torch.tensor(1.0)))
    assert is_int(1) and is_int(np.uint8(1))
    assert not any(is_int(v) for v in (True, 1.0, "1", None))


def test_check_class_indices():
    labels = torch.tensor([0, 2, 1])
    assert check_class_indices(labels, 3, 3) is labels
    cases = [
        ([0, 1, 2], TypeError, "labels must be a torch.Tensor, got list"),
        (labels[:2], ValueError, r"labels must have shape \[3\] \(one entry per row of logits\), got shape \(2,\)"),
        (labels.float(), TypeError, "labels must be integer class indices, got torch.float32"),
        (labels.bool(), TypeError, "integer class indices"),
        (torch.tensor([0, 3, 1]), ValueError, r"labels must lie in \[0, 3\), got values in \[0, 3\]"),
        (torch.tensor([0, -1, 1]), ValueError, r"got values in \[-1, 1\]"),
    ]
    for bad, exc, pattern in cases:
        with pytest.raises(exc, match=pattern):
            check_class_indices(bad, 3, 3)

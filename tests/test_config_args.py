"""configs.base.parse_arg: the ``--config=file.py:a=1,b=x,flag`` arguments of a config file, typed like
their defaults."""

from __future__ import annotations

import ml_collections
import pytest

from configs.base import parse_arg

DEFAULTS = dict(epochs=30, sparsity=0.9, model="resnet18", tost=False, runlocal=False, variables=None)


def test_values_take_the_type_of_their_default():
    args = parse_arg("epochs=40,sparsity=0.95,model=vgg19", **DEFAULTS)
    assert isinstance(args, ml_collections.ConfigDict)
    assert (args.epochs, args.sparsity, args.model) == (40, 0.95, "vgg19")
    assert type(args.epochs) is int and type(args.sparsity) is float and type(args.model) is str


def test_a_float_default_takes_an_integer_string():
    args = parse_arg("sparsity=1", **DEFAULTS)
    assert args.sparsity == 1.0 and type(args.sparsity) is float


@pytest.mark.parametrize("value, expected", [("true", True), ("True", True), ("1", True), ("yes", True),
                                             ("false", False), ("0", False), ("no", False)])
def test_booleans(value, expected):
    args = parse_arg(f"tost={value}", **DEFAULTS)
    assert args.tost is expected


def test_a_bare_name_means_true():
    args = parse_arg("runlocal,epochs=5", **DEFAULTS)
    assert args.runlocal is True and args.tost is False and args.epochs == 5


def test_defaults_are_kept_for_what_is_not_given():
    for arg in (None, "", ","):
        assert parse_arg(arg, **DEFAULTS).to_dict() == DEFAULTS
    assert parse_arg("epochs=1", **DEFAULTS).to_dict() == {**DEFAULTS, "epochs": 1}


def test_a_none_default_takes_the_string():
    assert parse_arg("variables=/runs/a/rewind.npz", **DEFAULTS).variables == "/runs/a/rewind.npz"
    assert parse_arg("variables=3", **DEFAULTS).variables == "3"


def test_an_unknown_key_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown config argument 'sparsty'; known: \['epochs', 'model', "
                                         r"'runlocal', 'sparsity', 'tost', 'variables'\]"):
        parse_arg("sparsty=0.95", **DEFAULTS)


def test_a_value_that_does_not_fit_the_type_raises_value_error():
    with pytest.raises(ValueError):
        parse_arg("epochs=many", **DEFAULTS)


@pytest.mark.parametrize("arg, words", [
    ("model", "needs a value"),
    ("model=", "needs a value"),
    ("runlocal=maybe", "is a switch"),
    ("sparsity=high", "is not a float"),
])
def test_values_that_do_not_fit_are_refused(arg, words):
    with pytest.raises(ValueError, match=words):
        parse_arg(arg, model="resnet18", sparsity=0.9, runlocal=False)

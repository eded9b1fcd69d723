"""The shared argument checks: what they accept, what they say, and that they import nothing."""

import ast
import inspect
import re

import numpy as np
import pytest

import tf_lottery as tl
from tf_lottery import validators


def test_validators_import_nothing_from_tf_lottery():
    # Every module may use the checks, so they may depend on none of them.
    tree = ast.parse(inspect.getsource(validators))
    imported = [
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    ]
    assert not [name for name in imported if name and name.startswith("tf_lottery")]


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: validators.check_number(0, "temperature", positive=True),
            "Expected temperature to be a positive number. Received: temperature=0",
        ),
        (
            lambda: validators.check_int(0, "round_to", minimum=1, meaning="a multiple"),
            "Expected round_to to be a positive integer (a multiple). Received: round_to=0",
        ),
        (
            lambda: validators.check_choice(3, "p", (1, 2), meaning="the norm"),
            "Expected p to be 1 or 2 (the norm). Received: p=3",
        ),
        (
            lambda: tl.IterativePruning("PruneFraction"),
            "Expected criterion to be a tf_lottery criterion such as "
            "tf_lottery.PruneFraction(0.2) or tf_lottery.StdThreshold(0.5). "
            "Received: criterion='PruneFraction'",
        ),
        (
            lambda: tl.UnitNorm(scope="erk"),
            "Expected scope to be 'layer' or 'global'. Received: scope='erk'",
        ),
        (lambda: tl.UnitNorm(p=3), "Expected p to be 1 or 2 (the norm). Received: p=3"),
        (
            lambda: tl.BatchNormScale(round_to=True),
            "Expected round_to to be a positive integer (keep unit counts a multiple of it, "
            "e.g. 8). Received: round_to=True",
        ),
        (
            lambda: tl.SynFlow(1.0),
            "Expected sparsity to be a number in [0, 1) (the fraction of all the pruned "
            "layers' weights to have pruned). Received: sparsity=1.0",
        ),
        (
            lambda: tl.GraSP(data=(np.zeros((2, 3)), np.zeros(2)), temperature=-1.0),
            "Expected temperature to be a positive number (the logits are divided by it). "
            "Received: temperature=-1.0",
        ),
    ],
)
def test_a_bad_argument_gets_the_shared_message(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_numpy_numbers_pass_the_checks_as_python_numbers():
    criterion = tl.UnitNorm(round_to=np.int64(8))
    assert criterion.round_to == 8 and type(criterion.round_to) is int
    assert tl.SynFlow(np.float32(0.5), iterations=np.int32(3)).get_config()["iterations"] == 3

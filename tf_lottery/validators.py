"""Argument checks shared by every public constructor and function.

Each check raises a `ValueError` that names the argument, says what was
expected and what was received, and returns the value (normalized where that
helps, e.g. an int fraction becomes a float), so callers can write
`self.rate = check_fraction(rate, "rate")`.
"""

import numbers


def is_int(value):
    """Whether `value` is an integer, numpy's included (and not a bool)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value):
    """Whether `value` is a real number, numpy's included (and not a bool)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def fail(argument, expected, value, meaning=""):
    """Raises the one ValueError every check raises: `Expected {argument} to be {expected}.`"""
    if meaning:
        expected += f" ({meaning})"
    raise ValueError(f"Expected {argument} to be {expected}. Received: {argument}={value!r}")


def check_int(value, argument, *, minimum=0, allow_none=False, meaning=""):
    """An int `>= minimum`, or `None` with `allow_none=True`; `meaning` as in `check_number`."""
    if value is None and allow_none:
        return None
    if not is_int(value) or value < minimum:
        expected = {0: "a non-negative integer", 1: "a positive integer"}.get(
            minimum, f"an integer >= {minimum}"
        )
        fail(argument, expected + (" or None" if allow_none else ""), value, meaning)
    return int(value)


def check_number(value, argument, *, positive=False, meaning=""):
    """A non-negative (or, with `positive=True`, positive) int or float, returned as a float.

    `meaning` says what the number stands for in the message.
    """
    if not is_number(value) or not (value > 0 if positive else value >= 0):
        fail(argument, "a positive number" if positive else "a non-negative number", value, meaning)
    return float(value)


def check_fraction(value, argument, *, allow_zero=False, allow_none=False, meaning=""):
    """A number in (0, 1), or in [0, 1) with `allow_zero=True`; `None` if allowed."""
    if value is None and allow_none:
        return None
    if not (is_number(value) and (0 <= value if allow_zero else 0 < value) and value < 1):
        interval = "in [0, 1)" if allow_zero else "strictly between 0 and 1"
        expected = f"a number {interval}" + (f" ({meaning})" if meaning else "")
        fail(argument, expected + (", or None" if allow_none else ""), value)
    return float(value)


def check_weight(value, argument, *, meaning=""):
    """A number in [0, 1], returned as a float: the weight of one term of two."""
    if not (is_number(value) and 0 <= value <= 1):
        fail(argument, "a number in [0, 1]", value, meaning)
    return float(value)


def check_bool(value, argument):
    """`True` or `False`."""
    if not isinstance(value, bool):
        fail(argument, "True or False", value)
    return value


def check_choice(value, argument, choices, *, meaning=""):
    """One of `choices`, compared with `==`."""
    if value not in choices:
        fail(argument, " or ".join(repr(c) for c in choices), value, meaning)
    return value


def check_instance(value, argument, types, expected):
    """An instance of `types`; `expected` says in words what to pass instead."""
    if not isinstance(value, types):
        fail(argument, expected, value)
    return value


def check_per_layer(per_layer, argument, check_value):
    """A dict from layer name to a value that passes `check_value(value, name)`.

    `None` gives `{}`. Each value is checked with the argument named
    `argument['layer']` in the message.
    """
    if per_layer is None:
        return {}
    if not isinstance(per_layer, dict):
        fail(argument, "a dict from layer name to value", per_layer)
    return {name: check_value(v, f"{argument}[{name!r}]") for name, v in per_layer.items()}

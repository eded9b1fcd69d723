"""Samples for a model with one or more inputs: arrays, lists, dicts or a tf.data.Dataset.

Every entry point that takes model inputs (`export_tflite`'s
`representative_data`, `run_tflite`, the `tf-lottery` command) turns them into
one array per input, in the model's order, here.

A Keras model and the .tflite file made from it can order the same inputs
differently: the model as its `inputs` list, the file's signature by name. Where
they differ, a list of arrays could mean either, and is refused (`AmbiguousOrder`):
a dict by input name is the one form that means the same everywhere.
"""

from typing import NamedTuple

import numpy as np


class ModelInput(NamedTuple):
    """One input of a model or a .tflite file.

    Attributes:
        name: Its name: a Keras input's name, or the file's signature name.
        shape: Its shape, batch first, with `None` where any size goes.
    """

    name: str
    shape: tuple


class AmbiguousOrder(ValueError):
    """A list of arrays was given where the inputs have two different orders."""


def _shape_text(shape):
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def _fits(array, spec):
    return array.ndim == len(spec.shape) and all(
        want is None or want == got for want, got in zip(spec.shape[1:], array.shape[1:])
    )


def another_order(data, inputs):
    """Names of `inputs` in another order that a list of arrays `data` fits too, or `None`.

    Where the arrays fit the inputs in two orders, a list in the wrong one runs
    without an error: a .tflite file, which does not record its Keras model's
    input order, can only refuse it.
    """
    if not isinstance(data, (list, tuple)) or len(data) != len(inputs) or len(inputs) < 2:
        return None
    try:
        arrays = [np.asarray(array) for array in data]
    except ValueError:
        return None
    names = [spec.name for spec in inputs]
    for i in range(len(inputs)):
        for j in range(i + 1, len(inputs)):
            if _fits(arrays[i], inputs[j]) and _fits(arrays[j], inputs[i]):
                names[i], names[j] = names[j], names[i]
                return names
    return None


def _check_array(array, spec, argument):
    if array.ndim < 1 or len(array) == 0 or not _fits(array, spec):
        raise ValueError(
            f"Expected {argument} for input {spec.name!r} to be a batch of shape "
            f"{_shape_text(spec.shape)}, e.g. x_train[:300]. Received: {argument} of shape "
            f"{array.shape}"
        )


def _check_unambiguous(data, names, argument, orders):
    """Refuses a list or tuple of arrays when `orders` (label to names) differ."""
    if not isinstance(data, (list, tuple)) or len({tuple(o) for o in orders.values()}) < 2:
        return
    two = " and ".join(f"{label} {list(order)}" for label, order in orders.items())
    example = ", ".join(f"{name!r}: ..." for name in names)
    raise AmbiguousOrder(
        f"Expected {argument} to be a dict of arrays by input name, e.g. "
        f"{argument}={{{example}}}. A {type(data).__name__} of arrays is ambiguous here: "
        f"the inputs come in two orders, {two}. Received: {argument} as a "
        f"{type(data).__name__} of {len(data)}"
    )


def arrange(data, inputs, argument, orders=None):
    """Returns one array per input, in the order of `inputs`.

    Args:
        data: An array (one-input models), a list or tuple of arrays in the
            order of `inputs`, or a dict of arrays by input name. For one input,
            a list of more than one item is a list of samples.
        inputs: A list of `ModelInput`.
        argument: The argument's name, for error messages.
        orders: Optional dict from a description of an order (`"the Keras
            model's order"`) to the input names in that order: the orders a
            list could be meant in. Where they differ, a list or tuple is
            refused. Defaults to `None`.

    Returns:
        A list of numpy arrays with the same number of samples.

    Raises:
        ValueError: `data` does not fit `inputs`; the message says how.
        AmbiguousOrder: `data` is a list or tuple and `orders` differ.
    """
    names = [spec.name for spec in inputs]
    if len(inputs) > 1:
        _check_unambiguous(data, names, argument, orders or {})
    if isinstance(data, dict):
        if set(data) != set(names):
            raise ValueError(
                f"Expected {argument} to hold one array per input, by name: {names}. "
                f"Received: {argument} with keys {sorted(data)}"
            )
        arrays = [data[name] for name in names]
    elif isinstance(data, (list, tuple)) and len(inputs) > 1:
        if len(data) != len(inputs):
            raise ValueError(
                f"Expected {argument} to hold {len(inputs)} arrays, one per input {names}. "
                f"Received: a {type(data).__name__} of {len(data)}"
            )
        arrays = list(data)
    elif len(inputs) > 1:
        raise ValueError(
            f"Expected {argument} to be a list or a dict of {len(inputs)} arrays, one per "
            f"input {names}. Received: {argument} of type {type(data).__name__}"
        )
    elif isinstance(data, (list, tuple)) and len(data) == 1:
        arrays = list(data)
    else:  # one input: an array, or a list of samples
        arrays = [data]
    try:
        arrays = [np.asarray(array) for array in arrays]
    except ValueError as error:
        raise ValueError(
            f"Expected {argument} to hold arrays, one per input {names}. Received: {error}"
        ) from error
    for array, spec in zip(arrays, inputs):
        _check_array(array, spec, argument)
    if len({len(array) for array in arrays}) > 1:
        raise ValueError(
            f"Expected the arrays of {argument} to hold as many samples each. Received: "
            f"{[len(array) for array in arrays]} samples for the inputs {names}"
        )
    return arrays


def _arrange_element(element, inputs, argument, orders):
    try:
        return arrange(element, inputs, argument, orders)
    except ValueError as error:
        if not isinstance(element, (tuple, list)) or len(element) < 2:
            raise
        try:  # (x, y[, sample_weight])
            return arrange(element[0], inputs, argument, orders)
        except ValueError:
            if isinstance(error, AmbiguousOrder):
                raise error from None
            raise


def take(data, inputs, argument, limit, orders=None):
    """`arrange` for arrays, lists, dicts and tf.data Datasets; the first `limit` samples.

    A dataset yields batches: each an array, list or dict of inputs, or an
    `(x, y)` tuple whose `x` is one of these. It is read only until `limit`
    samples are in. `orders` is as for `arrange`.

    Returns:
        One array per input, or `None` when `data` is `None`.
    """
    if data is None:
        return None
    if not hasattr(data, "as_numpy_iterator"):
        return [array[:limit] for array in arrange(data, inputs, argument, orders)]
    batches, count = [], 0
    for element in data.as_numpy_iterator():
        batches.append(_arrange_element(element, inputs, argument, orders))
        count += len(batches[-1][0])
        if count >= limit:
            break
    if not batches:
        raise ValueError(f"Expected {argument} to yield batches. Received: an empty dataset")
    return [np.concatenate(parts)[:limit] for parts in zip(*batches)]


def random_inputs(model, n):
    """`n` random examples for each of `model`'s inputs, a list of arrays.

    Integer inputs (token ids) are 0; a dimension the model leaves open is 8.
    """
    rng = np.random.default_rng(0)
    inputs = []
    for tensor in model.inputs:
        shape = [n] + [8 if d is None else d for d in tensor.shape[1:]]
        if "int" in str(tensor.dtype):
            inputs.append(np.zeros(shape, dtype=tensor.dtype))
        else:
            inputs.append(rng.normal(size=shape).astype("float32"))
    return inputs

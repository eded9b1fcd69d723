"""Evaluating one metric of a compiled model on arrays or a dataset."""


def evaluate_metric(model, data, metric):
    """Returns one metric of `model.evaluate` on `data`.

    Args:
        model: A compiled Keras model.
        data: `(x, y)` arrays or a dataset of batches.
        metric: The metric's name in the results, e.g. `"accuracy"`, or a
            function that picks the name from the results' keys.
    """
    if isinstance(data, tuple):
        result = model.evaluate(*data, verbose=0, return_dict=True)
    else:
        result = model.evaluate(data, verbose=0, return_dict=True)
    name = metric(result) if callable(metric) else metric
    if name not in result:
        raise ValueError(
            f"metric={name!r} is not one of the model's metrics: {sorted(result)}. Compile "
            "with metrics=[...] that include it, or choose one of these."
        )
    return float(result[name])

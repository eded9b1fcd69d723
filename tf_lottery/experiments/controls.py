"""The controls of a lottery experiment: what each trains beside the ticket, round by round.

A control's round N trains the same epochs as the ticket's round N and needs
only that round's masks:

- `"reinit"`: the ticket's masks, fresh random weights (Frankle & Carbin's
  random reinitialization).
- `"random_prune"`: random masks with the ticket's per-layer sparsity, from θ0
  (open_lth's `layerwise` random pruning).
- `"random_global"`: random masks with the ticket's overall sparsity, drawn over
  all prunable weights at once, so that every layer keeps about the same
  fraction (open_lth's `global`), from θ0.
- `"random_even"`: the ticket's overall sparsity in every tensor, exactly
  (open_lth's `even`), from θ0.
- A pruning-at-initialization criterion (`tf_lottery.SNIP`, `SynFlow`,
  `GraSP`): θ0 pruned once by the criterion to the ticket's overall sparsity,
  with the criterion's own per-layer allocation. Its arm is named after it
  (`"snip"`, `"synflow"`, `"grasp"`).
"""

import numpy as np

from tf_lottery.init_criteria import InitCriterion

NAMED = ("reinit", "random_prune", "random_global", "random_even")
# Random spreads, by control, and their index in the seed of their generator.
SPREADS = {"random_prune": 0, "random_global": 1, "random_even": 2}


def name_of(control):
    """The arm name of a control: the string itself, or the criterion's `arm`."""
    return control.arm if isinstance(control, InitCriterion) else control


def check_controls(controls, rewind):
    """The controls as a tuple; a ValueError unless each is known and appears once."""
    controls = (controls,) if isinstance(controls, (str, InitCriterion)) else tuple(controls)
    unknown = [
        c
        for c in controls
        if not (c in NAMED if isinstance(c, str) else isinstance(c, InitCriterion))
    ]
    names = [name_of(c) for c in controls if c not in unknown]
    if unknown or len(set(names)) != len(names):
        raise ValueError(
            f"Expected controls from {NAMED} or pruning-at-initialization criteria such as "
            "tf_lottery.SNIP(data=...) or tf_lottery.SynFlow(), each once. Received: "
            f"controls={controls!r}"
        )
    if rewind is None and "reinit" in controls:
        raise ValueError(
            "The 'reinit' control compares with rewinding; it needs rewind='init' or an int."
        )
    return controls


def describe(control, fingerprint):
    """A JSON-ready description of a control, for the run's settings."""
    if isinstance(control, str):
        return control
    description = {"arm": control.arm, "class": type(control).__name__, **control.get_config()}
    description.pop("sparsity")  # set by the runner, round by round
    if hasattr(control, "data"):
        description["data"] = fingerprint(control.data)
    return description


def arm_names(described):
    """The arm names of the controls as `describe` wrote them in settings.json."""
    return [c if isinstance(c, str) else c["arm"] for c in described]


def remaining(masks):
    """The fraction of the weights of a `masks_of` dict that survive."""
    return sum(int(m.sum()) for m in masks.values()) / sum(m.size for m in masks.values())


def random_masks(masks, control, seed, round_index):
    """Random masks for one of the random controls, from the ticket's `masks`.

    Args:
        masks: The ticket's masks of the round, a dict of boolean arrays.
        control: `"random_prune"`, `"random_global"` or `"random_even"`.
        seed: The run's seed.
        round_index: The round.

    Returns:
        A dict of masks like `masks`.
    """
    if control == "random_prune":
        # The generator of earlier versions, so that their runs resume alike.
        rng = np.random.default_rng(seed + round_index)
    else:
        rng = np.random.default_rng([seed, round_index, SPREADS[control]])
    if control == "random_prune":
        counts = {k: int(m.sum()) for k, m in masks.items()}
    elif control == "random_even":
        density = remaining(masks)
        counts = {k: max(1, round(density * m.size)) for k, m in masks.items()}
    else:
        return _spread_globally(masks, rng)
    result = {}
    for key, mask in masks.items():
        flat = np.zeros(mask.size, dtype=mask.dtype)
        flat[rng.permutation(mask.size)[: counts[key]]] = 1
        result[key] = flat.reshape(mask.shape)
    return result


def _spread_globally(masks, rng):
    total = sum(m.size for m in masks.values())
    flat = np.zeros(total, dtype=bool)
    flat[rng.permutation(total)[: sum(int(m.sum()) for m in masks.values())]] = True
    result, start = {}, 0
    for key, mask in masks.items():
        result[key] = flat[start : start + mask.size].reshape(mask.shape).astype(mask.dtype)
        start += mask.size
    return result

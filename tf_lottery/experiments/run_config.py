"""`RunConfig`: the settings of a lottery run, checked once, and the fingerprint resume compares.

As in open_lth, the hyperparameters of an experiment are one frozen dataclass
with a help string beside each field. `RunConfig.settings()` describes them in
JSON, as each run's settings.json (and a sweep's sweep.json) holds them; a run
started again in the same `out_dir` must describe itself the same way, or it is
refused (`RunConfig.claim`).
"""

import dataclasses
import hashlib
import json
import os

import keras
import numpy as np

from tf_lottery.fraction import PruneFraction
from tf_lottery.criteria import check_criterion
from tf_lottery.experiments.controls import check_controls
from tf_lottery.experiments.controls import describe as describe_control
from tf_lottery.experiments.controls import name_of
from tf_lottery.experiments.instability import check_points
from tf_lottery.experiments.paths import FORMAT
from tf_lottery.files import write_once
from tf_lottery.structured.target import check_target
from tf_lottery.validators import check_choice
from tf_lottery.validators import check_int
from tf_lottery.validators import is_int

KEEP_WEIGHTS = ("compressed", "full")


def _field(help, default=None):
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The settings of one lottery run, shared by its seeds; see `find_winning_ticket`.

    Checked when made: a wrong argument raises a ValueError naming it.
    `keep_weights` and `verbose` say how a run is kept and printed, not what it
    computes, so they are not part of `settings()`.
    """

    build_model: object = _field("A function returning the same Keras architecture on every call.")
    epochs_per_round: int = _field("Training epochs in every round.", 1)
    train_data: object = _field("`(x, y)` arrays or a dataset of batches.")
    validation_data: object = _field("Its loss picks the early-stop epoch.")
    test_data: object = _field("Evaluated after every epoch, if given.")
    criterion: object = _field("Prunes each round; `None` for `PruneFraction(0.2)`.")
    rewind: object = _field("'init', an epoch count k < epochs_per_round, or None.", "init")
    controls: tuple = _field(
        "Arms trained beside the ticket (`tf_lottery.experiments.controls`).", ()
    )
    compile_kwargs: dict = _field("Keyword arguments of `model.compile`, if build_model does not.")
    fit_kwargs: dict = _field("Extra keyword arguments of `model.fit`.")
    instability_points: int = _field("Points of the error-barrier path per round, or None.")
    target: object = _field("A `tf_lottery.Target` the rounds prune toward, or None.")
    keep_weights: str = _field("'compressed', or 'full' to add Keras weight files.", "compressed")
    verbose: int = _field("0 silent, 1 a line per round, 2 Keras' progress bar too.", 0)

    def __post_init__(self):
        # Checked arguments replace the given ones (defaults filled in, controls
        # and target normalized); the dataclass is frozen from then on.
        criterion = PruneFraction(0.2) if self.criterion is None else self.criterion
        _check_arguments(self.build_model, criterion, self.epochs_per_round, self.rewind)
        if self.instability_points is not None:
            check_points(self.instability_points, "instability_points")
        controls = tuple(check_controls(self.controls, self.rewind))
        target = None if self.target is None else check_target(self.target, criterion)
        check_choice(self.keep_weights, "keep_weights", KEEP_WEIGHTS)
        fit_kwargs = dict(self.fit_kwargs or {})
        for reserved in ("epochs", "validation_data", "x", "y"):
            if reserved in fit_kwargs:
                raise ValueError(
                    f"fit_kwargs may not set {reserved!r}; find_winning_ticket sets it."
                )
        checked = dict(criterion=criterion, controls=controls, target=target, fit_kwargs=fit_kwargs)
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @property
    def arms(self):
        """Each control by its arm name (see `tf_lottery.experiments.controls`)."""
        return {name_of(c): c for c in self.controls}

    def settings(self):
        """The JSON-ready description of the run that settings.json holds (less
        format, seed and layers) and that resume compares."""
        settings = {
            "build_model": getattr(self.build_model, "__qualname__", repr(self.build_model)),
            "criterion": {"class": type(self.criterion).__name__, **self.criterion.get_config()},
            "epochs_per_round": self.epochs_per_round,
            "rewind": self.rewind,
            "controls": [describe_control(c, _fingerprint) for c in self.controls],
            "compile_kwargs": _describe(self.compile_kwargs),
            "fit_kwargs": _describe(self.fit_kwargs),
            "train_data": _fingerprint(self.train_data),
            "validation_data": _fingerprint(self.validation_data),
            "test_data": None if self.test_data is None else _fingerprint(self.test_data),
            "instability_points": self.instability_points,
        }
        if self.target is not None:  # left out otherwise: runs saved before resume
            settings["target"] = self.target.get_config()
        return json.loads(json.dumps(settings))

    def claim(self, paths, seed=None, first_layers=None):
        """The settings of a run (or, with `seed=None`, of a sweep), written on first use.

        A new run writes them (with the layers of `first_layers()`) unless a
        process beside it has just done so; an existing one must have the same.

        Returns:
            The saved settings.
        """
        settings = self.settings() if seed is None else {**self.settings(), "seed": seed}
        sweep = seed is None
        read = paths.read_sweep_settings if sweep else paths.read_settings
        saved = read()
        if saved is None:
            written = {"format": FORMAT, **settings}
            if first_layers is not None:
                written["layers"] = first_layers()
            os.makedirs(paths.root, exist_ok=True)
            write_once(
                paths.sweep_settings if sweep else paths.settings, json.dumps(written, indent=2)
            )
            saved = read()
        different = sorted(
            k
            for k in set(saved) | set(settings)
            if k not in ("format", "layers")
            and _comparable(saved.get(k)) != _comparable(settings.get(k))
        )
        if different:
            details = "; ".join(
                f"{k}: {saved.get(k)!r} on disk, {settings.get(k)!r} now" for k in different
            )
            raise ValueError(
                f"out_dir {paths.root!r} holds a run with other settings ({details}). Use a new "
                "out_dir, or the same settings to resume that run."
            )
        return saved


def _check_arguments(build_model, criterion, epochs_per_round, rewind):
    """Raises a ValueError naming the first setting that is wrong."""
    check_criterion(criterion)
    if not callable(build_model):
        raise ValueError(
            f"Expected build_model to be a function returning a Keras model. Received: {build_model!r}"
        )
    check_int(epochs_per_round, "epochs_per_round", minimum=1)
    if is_int(rewind):
        if not 0 <= rewind < epochs_per_round:
            raise ValueError(
                f"rewind={rewind} must be an epoch count within round 0: 0 <= rewind < "
                f"epochs_per_round={epochs_per_round}."
            )
    elif rewind not in ("init", None):
        raise ValueError(
            f"Expected rewind to be 'init', None or an epoch count. Received: rewind={rewind!r}"
        )


def _fingerprint(data):
    """A short hash of a dataset's arrays, so a resumed run checks its data."""
    if not isinstance(data, tuple):
        return type(data).__name__
    digest = hashlib.sha256()
    # Inputs may be dicts by name (every KerasHub model's): flattened by key.
    for array in keras.tree.flatten(data):
        array = np.asarray(array)
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array[:64]).tobytes())
    return digest.hexdigest()[:16]


def _describe(value):
    """A JSON-ready description of a setting that is the same from run to run."""
    if isinstance(value, dict):
        return {str(k): _describe(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_describe(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    try:
        return _describe(keras.saving.serialize_keras_object(value))
    except Exception:  # not a Keras object: its type is all we can compare
        return type(value).__name__


def _comparable(value):
    """A described setting less the names of Keras objects, which never change results.

    Keras names an optimizer "adam", then "adam_1" for the next one made in the
    same process, so a process that runs a second seed describes its optimizer
    under another name.
    """
    if isinstance(value, dict):
        serialized = "class_name" in value and isinstance(value.get("config"), dict)
        return {
            k: _comparable(
                {n: c for n, c in v.items() if n != "name"} if serialized and k == "config" else v
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return value

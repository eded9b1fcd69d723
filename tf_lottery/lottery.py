"""Lottery-ticket experiments: one training per round, controls, seeds, artifacts, resume.

`find_winning_ticket` runs the experiment the way open_lth does: round 0 trains
the dense network; each later round prunes the previous round's trained weights,
rewinds the survivors and trains again. Controls (see `tf_lottery.controls`)
train beside the ticket from the same seed, each round at the ticket's sparsity
of that round. With `seeds=(...)` the experiment runs once per seed, each in a
folder of its own, and the history summarizes the seeds.

Every round is kept on disk (see `tf_lottery.paths`, which also says what a unit
of work is). A run started again with the same `out_dir` skips the rounds it
already finished, and processes may run different seeds into one `out_dir` at
the same time; `collect_history` gathers whatever has finished.
"""

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time

import keras
import numpy as np

from tf_lottery import pruning
from tf_lottery.artifacts import check_layers
from tf_lottery.artifacts import copy_unit_masks
from tf_lottery.artifacts import describe_layers
from tf_lottery.artifacts import load_state
from tf_lottery.artifacts import masks_of
from tf_lottery.artifacts import save_arrays
from tf_lottery.artifacts import save_state
from tf_lottery.artifacts import set_masks
from tf_lottery.artifacts import thresholds_of
from tf_lottery.controls import arm_names
from tf_lottery.controls import check_controls
from tf_lottery.controls import describe as describe_control
from tf_lottery.controls import name_of
from tf_lottery.controls import random_masks
from tf_lottery.controls import remaining
from tf_lottery.criteria import PruneFraction
from tf_lottery.criteria import check_criterion
from tf_lottery.evaluation import evaluate_metric
from tf_lottery.files import write_atomically
from tf_lottery.files import write_once
from tf_lottery.history import LotteryHistory
from tf_lottery.history import RoundResult
from tf_lottery.history import plot_history  # noqa: F401  (tf_lottery.lottery.plot_history)
from tf_lottery.init_criteria import InitCriterion
from tf_lottery.instability import check_points
from tf_lottery.instability import interpolate
from tf_lottery.paths import FORMAT
from tf_lottery.paths import TICKET
from tf_lottery.paths import RunPaths
from tf_lottery.report import sparsity
from tf_lottery.target import check_target
from tf_lottery.target import estimate
from tf_lottery.target import prune_toward
from tf_lottery.transforms import wrap
from tf_lottery.validators import check_int
from tf_lottery.validators import is_int
from tf_lottery.wrapper import find_rewind_wrappers
from tf_lottery.wrapper import find_wrappers

KEEP_WEIGHTS = ("compressed", "full")
# Added to the seed of the second copy's data order in an instability analysis,
# so that it differs from the data order of every round's own training.
_INSTABILITY_SEED = 104729


def _accuracy_key(logs, prefix=""):
    for key in logs:
        if key.startswith(prefix) and key[len(prefix) :].endswith(("accuracy", "acc")):
            if prefix or not key.startswith("val_"):
                return key
    return None


class _RecordEpochs(keras.callbacks.Callback):
    """Records per-epoch metrics and test accuracy; saves the rewind point."""

    def __init__(self, test_data, rewind_epoch=None, rewind_path=None):
        super().__init__()
        self.test_data = test_data
        self.rewind_epoch = rewind_epoch
        self.rewind_path = rewind_path
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        if self.rewind_epoch is not None and epoch == self.rewind_epoch:
            # Every wrapper that tf_lottery.rewind resets, BatchNormalization's included.
            for wrapper in pruning.rewindable(self.model):
                wrapper.save_rewind_point(epoch)
            save_state(self.model, self.rewind_path)

    def on_epoch_end(self, epoch, logs=None):
        record = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
        if self.test_data is not None:
            record["test_accuracy"] = evaluate_metric(self.model, self.test_data, _accuracy_key)
        self.epochs.append(record)


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


def _claim_settings(paths, sweep, settings, first_layers=None):
    """The settings of a run (or, with `sweep=True`, of a sweep), written on first use.

    A new run writes `settings` (with the layers of `first_layers()`) unless a
    process beside it has just done so; an existing one must have the same
    settings.

    Returns:
        The saved settings.
    """
    read = paths.read_sweep_settings if sweep else paths.read_settings
    path = paths.sweep_settings if sweep else paths.settings
    saved = read()
    if saved is None:
        written = {"format": FORMAT, **settings}
        if first_layers is not None:
            written["layers"] = first_layers()
        os.makedirs(paths.root, exist_ok=True)
        write_once(path, json.dumps(written, indent=2))
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


def _publish(partial, folder):
    """Renames a finished round's folder into place, unless another process was first.

    A round folder that exists is finished and never replaced: renaming onto it
    fails, and the caller removes its own copy.
    """
    try:
        os.rename(partial, folder)
    except OSError:
        if not os.path.isdir(folder):
            raise


@dataclasses.dataclass
class _Experiment:
    """The state shared by the rounds of one seed's run.

    `layers` describes the run's first model; every model built afterwards must
    match it (see `tf_lottery.artifacts`). `controls` maps each control's arm
    name to the control (see `tf_lottery.controls`).
    """

    build_model: object
    train_data: object = None
    validation_data: object = None
    test_data: object = None
    criterion: object = None
    epochs: int = 0
    rewind: object = None
    seed: int = 0
    compile_kwargs: dict = None
    fit_kwargs: dict = dataclasses.field(default_factory=dict)
    paths: object = None
    verbose: int = 0
    keep_weights: str = "compressed"
    layers: list = None
    controls: dict = dataclasses.field(default_factory=dict)
    instability_points: int | None = None
    target: object = None
    # Who builds the models, for the messages; load_round's models are for
    # inference and need no compile.
    caller: str = "find_winning_ticket"

    def new_model(self, seed):
        """A freshly initialized, wrapped and compiled model."""
        keras.utils.set_random_seed(seed)
        model = self.build_model()
        if not isinstance(model, keras.Model):
            raise ValueError(
                f"{self.caller} needs a build_model that returns a Keras model. "
                f"Received: {type(model).__name__}"
            )
        if not find_wrappers(model):
            compiled = model.compiled
            config = model.get_compile_config() if compiled else None
            # A loaded round holds θ0, and the rewind point too with rewind=k.
            model = wrap(model, keep="both" if is_int(self.rewind) else "rewind")
            if config is not None and not self.compile_kwargs:
                model.compile_from_config(config)
        if self.layers is not None:
            check_layers(self.layers, model, self.paths.settings, self.caller)
        if self.compile_kwargs:
            kwargs = dict(self.compile_kwargs)
            optimizer = kwargs.get("optimizer")
            if isinstance(optimizer, keras.optimizers.Optimizer):
                # One optimizer per round: a built optimizer cannot move to new variables.
                kwargs["optimizer"] = optimizer.__class__.from_config(optimizer.get_config())
            model.compile(**kwargs)
        if not model.compiled and self.caller == "find_winning_ticket":
            raise ValueError(
                "find_winning_ticket needs a compiled model: have build_model compile it, or "
                "pass compile_kwargs=dict(optimizer=..., loss=..., metrics=['accuracy'])."
            )
        return model

    def initial_model(self, arm, round_index):
        """A model holding the arm's θ0, and the ticket's rewind point once there is one.

        θ0 is the run's (initial.npz, written by the first process to get here
        and then read by every process) except for the reinit control, which
        draws new weights every round.
        """
        if arm == "reinit" and round_index > 0:
            return self.new_model(self.seed + 7919 * round_index)
        model = self.new_model(self.seed)
        if not os.path.exists(self.paths.initial_weights):
            save_state(model, self.paths.initial_weights, once=True)
        load_state(model, self.paths.initial_weights)
        for wrapper in find_rewind_wrappers(model):
            wrapper.save_initial_weights()
        rewind_point = RunPaths.rewind_point(self.paths.round_dir(TICKET, 0))
        if arm == TICKET and os.path.exists(rewind_point):
            load_state(model, rewind_point)
            # One epoch for all: files written before the fix hold it only in the
            # PruneWrappers, the RewindWrappers' still reading -1 (none saved).
            wrappers = pruning.rewindable(model)
            epoch = max(int(keras.ops.convert_to_numpy(w.rewind_epoch)) for w in wrappers)
            for wrapper in wrappers:
                wrapper.save_rewind_point(epoch)
        return model

    def trained_model(self, arm, round_index):
        """The model a finished round ended with: θ0, masks and trained weights."""
        folder = self.paths.round_dir(arm, round_index)
        model = self.initial_model(arm, round_index)
        with np.load(RunPaths.masks(folder)) as archive:
            set_masks(model, dict(archive), self.layers)
        load_state(model, RunPaths.trained_weights(folder))
        return model

    def ticket_masks(self, round_index):
        """The masks of the ticket's finished round."""
        with np.load(RunPaths.masks(self.paths.round_dir(TICKET, round_index))) as archive:
            return dict(archive)

    def start_model(self, arm, round_index):
        """The model a round trains, with its masks set and its weights rewound."""
        if round_index == 0:
            return self.initial_model(TICKET, 0)
        if arm == TICKET:
            trained = self.trained_model(TICKET, round_index - 1)
            if self.target is None:
                pruning.prune(trained, self.criterion)
            else:
                prune_toward(trained, self.criterion, self.target)
            if self.rewind is None:
                return trained
            model = self.initial_model(TICKET, round_index)
            for source, target in zip(find_wrappers(trained), find_wrappers(model)):
                target.pruning_round.assign(source.pruning_round.value)
                for a, b in zip(source.masked_weights, target.masked_weights):
                    b.threshold.assign(a.threshold.value)
            set_masks(model, masks_of(trained, self.layers), self.layers)
            copy_unit_masks(trained, model)
            return model
        ticket = self.ticket_masks(round_index)
        control = self.controls[arm]
        model = self.initial_model(arm, round_index)
        if isinstance(control, InitCriterion):
            # θ0 pruned by the criterion to the ticket's overall sparsity; the
            # criterion spreads it over the layers its own way.
            pruning.prune(model, control.with_sparsity(1.0 - remaining(ticket)))
            return model
        masks = ticket if arm == "reinit" else random_masks(ticket, arm, self.seed, round_index)
        set_masks(model, masks, self.layers)
        if arm == "reinit":  # the ticket's units; its trained state holds its unit masks
            copy_unit_masks(self.trained_model(TICKET, round_index), model)
        return model

    def reached(self, round_index):
        """The `TargetReport` of the ticket's finished round, or `None` without a target."""
        if self.target is None:
            return None
        return estimate(self.trained_model(TICKET, round_index), self.criterion, self.target)

    def fit(self, model, round_index, data_seed, folder=None, test=True):
        """Trains a round; `folder` receives round 0's rewind point, with rewind=k."""
        rewind_epoch = self.rewind if isinstance(self.rewind, int) and round_index == 0 else None
        recorder = _RecordEpochs(
            self.test_data if test else None,
            rewind_epoch if folder else None,
            folder and RunPaths.rewind_point(folder),
        )
        kwargs = dict(self.fit_kwargs)
        kwargs.setdefault("verbose", 1 if self.verbose >= 2 else 0)
        kwargs["callbacks"] = [recorder, *kwargs.get("callbacks", [])]
        keras.utils.set_random_seed(data_seed)
        start = time.time()
        if isinstance(self.train_data, tuple):
            model.fit(
                *self.train_data, epochs=self.epochs, validation_data=self.validation_data, **kwargs
            )
        else:
            model.fit(
                self.train_data, epochs=self.epochs, validation_data=self.validation_data, **kwargs
            )
        return recorder.epochs, time.time() - start

    def run_round(self, arm, round_index):
        """Trains one round into a folder of its own, then moves it into place."""
        partial = self.paths.partial_dir(arm, round_index)
        os.makedirs(partial)
        try:
            self.train_round(arm, round_index, partial)
            _publish(partial, self.paths.round_dir(arm, round_index))
        finally:
            shutil.rmtree(partial, ignore_errors=True)

    def train_round(self, arm, round_index, folder):
        model = self.start_model(arm, round_index)
        if self.instability_points:  # the second copy starts where this one does
            start = [keras.ops.convert_to_numpy(v.value) for v in model.weights]
        save_arrays(RunPaths.masks(folder), masks_of(model, self.layers))
        if self.keep_weights == "full":
            model.save_weights(RunPaths.keras_start_weights(folder))
        epochs, seconds = self.fit(model, round_index, self.seed + 1 + round_index, folder)
        save_state(model, RunPaths.trained_weights(folder))
        if self.keep_weights == "full":
            model.save_weights(RunPaths.keras_trained_weights(folder))
        val_key = _accuracy_key(epochs[0], "val_")
        if val_key is None or "val_loss" not in epochs[0]:
            raise ValueError(
                "find_winning_ticket needs validation accuracy: compile with "
                f"metrics=['accuracy']. The epoch logs had: {sorted(epochs[0])}"
            )
        early = int(np.argmin([e["val_loss"] for e in epochs]))
        report = sparsity(model)
        record = {
            "arm": arm,
            "round": round_index,
            "remaining": 1.0 - report.sparsity,
            "best_val_accuracy": max(e[val_key] for e in epochs),
            "early_stop_epoch": early + 1,
            "test_accuracy": epochs[early].get("test_accuracy"),
            "final_test_accuracy": epochs[-1].get("test_accuracy"),
            "seconds": seconds,
            "seed": self.seed,
        }
        if self.instability_points:
            record["error_barrier"] = self.measure_instability(model, start, round_index, folder)
        # The run's layer names, which a builder that leaves naming to Keras
        # changes from call to call.
        names = {
            w.target_name: layer["name"] for w, layer in zip(find_wrappers(model), self.layers)
        }
        layer_sparsity = report.to_dict()
        for row in layer_sparsity["layers"]:
            row["layer"] = names.get(row["layer"], row["layer"])
        details = {
            "sparsity": layer_sparsity,
            "thresholds": {
                k: (None if math.isnan(v) else v)
                for k, v in thresholds_of(model, self.layers).items()
            },
            "epochs": epochs,
        }
        write_atomically(RunPaths.report(folder), json.dumps({**record, **details}, indent=2))

    def measure_instability(self, trained, start, round_index, folder):
        """The error barrier between `trained` and a copy trained from `start` on another
        data order; the whole path is written to the round's instability.json."""
        copy = self.new_model(self.seed)
        for variable, value in zip(copy.weights, start):
            variable.assign(value)
        self.fit(copy, round_index, self.seed + _INSTABILITY_SEED + round_index, test=False)
        result = interpolate(
            trained,
            copy,
            self.validation_data if self.test_data is None else self.test_data,
            points=self.instability_points,
            train_data=self.train_data,
            batch_size=self.fit_kwargs.get("batch_size") or 32,
            model=self.new_model(self.seed),
        )
        write_atomically(RunPaths.instability(folder), json.dumps(result.to_dict(), indent=2))
        return result.error_barrier


def _trainings(rounds, controls):
    """Every training of a seed's run, as (arm, round), in an order that respects
    what each needs: the ticket's round N needs its round N - 1, and a control's
    round N the ticket's round N."""
    yield TICKET, 0
    for round_index in range(1, rounds + 1):
        yield TICKET, round_index
        for arm in controls:
            yield arm, round_index


def _finished_rounds(run):
    """The report.json of every finished round of a run folder, by arm then round."""
    settings = run.read_settings()
    if settings is None:
        return []
    reports = []
    for arm in [TICKET, *arm_names(settings["controls"])]:
        parent = os.path.dirname(run.round_dir(arm, 0))
        names = os.listdir(parent) if os.path.isdir(parent) else []
        rounds = sorted(int(n[6:]) for n in names if n.startswith("round_") and n[6:].isdigit())
        reports += [RunPaths.report(run.round_dir(arm, r)) for r in rounds]
    return reports


def _runs(paths):
    """The run folders under `out_dir`: one per seed of a sweep, or the run itself."""
    if paths.read_sweep_settings() is not None:
        return [RunPaths(paths.seed_dir(seed)) for seed in paths.seeds()]
    return [paths] if paths.read_settings() is not None else []


def _history(reports):
    rows = []
    for path in reports:
        with open(path) as file:
            report = json.load(file)
        fields = {f.name: f for f in dataclasses.fields(RoundResult)}
        rows.append(
            RoundResult(**{name: report.get(name, f.default) for name, f in fields.items()})
        )
    arms = list(dict.fromkeys(r.arm for r in rows))
    seeds = list(dict.fromkeys(r.seed for r in rows))
    rows.sort(key=lambda r: (seeds.index(r.seed), r.round, r.arm != TICKET, arms.index(r.arm)))
    return LotteryHistory(rows)


def collect_history(out_dir):
    """Gathers every finished round under `out_dir` into one `LotteryHistory`.

    Reads the round folders of a run, or of every seed of a sweep, including
    seeds that other processes ran or are still running, and writes
    history.json, history.csv (one row per round, arm and seed) and summary.csv
    (mean, std, min, max and count across seeds) in `out_dir`. The files are
    derived from the round folders and can be written again at any time; when
    several processes finish at once, the last one to write sees every round.

    Args:
        out_dir: The `out_dir` given to `find_winning_ticket`.

    Returns:
        The `LotteryHistory`.

    Example:

    ```python
    history = tf_lottery.collect_history("runs/lenet_sweep")
    print(history)                  # mean ± std across the seeds finished so far
    ```
    """
    paths = RunPaths(out_dir)
    runs = _runs(paths)
    if not runs:
        raise ValueError(
            f"No lottery run in out_dir={os.fspath(out_dir)!r}: it has neither settings.json "
            "nor sweep.json. Pass the out_dir given to find_winning_ticket."
        )
    while True:
        reports = [r for run in runs for r in _finished_rounds(run)]
        history = _history(reports)
        history.to_json(paths.history_json)
        history.to_csv(paths.history_csv)
        history.to_csv(paths.summary_csv, summary=True)
        # A round that finished meanwhile may be missing from what was just
        # written: write again, so that the last writer's files hold everything.
        runs = _runs(paths)
        if [r for run in runs for r in _finished_rounds(run)] == reports:
            return history


def _check_seeds(seeds, seed):
    values = tuple(seeds) if isinstance(seeds, (tuple, list, range)) else None
    if (
        not values
        or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in values)
        or len(set(values)) != len(values)
    ):
        raise ValueError(
            "Expected seeds to be distinct non-negative integers, one run each, e.g. "
            f"seeds=(0, 1, 2). Received: seeds={seeds!r}"
        )
    if seed != 0:
        raise ValueError(
            "Pass seed for a run with one seed or seeds for several, not both. "
            f"Received: seed={seed!r}, seeds={seeds!r}"
        )
    return values


def _check_arguments(build_model, criterion, rounds, epochs_per_round, seed, rewind, out_dir):
    """Raises a ValueError naming the first argument of `find_winning_ticket` that is wrong."""
    check_criterion(criterion)
    if not callable(build_model):
        raise ValueError(
            f"Expected build_model to be a function returning a Keras model. Received: {build_model!r}"
        )
    check_int(rounds, "rounds")
    check_int(epochs_per_round, "epochs_per_round", minimum=1)
    check_int(seed, "seed")
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
    if not isinstance(out_dir, (str, os.PathLike)):
        raise ValueError(f"Expected out_dir to be a folder path. Received: out_dir={out_dir!r}")


def _check_arms(arms, controls):
    """The arms a call trains: all of them by default, else the names given."""
    names = [TICKET, *(name_of(c) for c in controls)]
    if arms is None:
        return names
    arms = [arms] if isinstance(arms, str) else list(arms)
    if not arms or any(a not in names for a in arms):
        raise ValueError(
            f"Expected arms to name some of this run's arms, {names}. Received: arms={arms!r}"
        )
    return arms


def _units(paths, seed, seeds, settings):
    """(seed, RunPaths, prefix for printing) of each seed's run: `out_dir` itself for
    one seed, `out_dir/seed_<s>` for each of `seeds` (after checking the sweep's settings)."""
    if seeds is None:
        if paths.read_sweep_settings() is not None:
            raise ValueError(
                f"out_dir {paths.root!r} holds a sweep over seeds (sweep.json). Pass "
                "seeds=(...) to run or extend it, or a new out_dir for a run with one seed."
            )
        return [(seed, paths, "")]
    if paths.read_settings() is not None:
        raise ValueError(
            f"out_dir {paths.root!r} holds a run with one seed (settings.json), not a "
            "sweep over seeds. Use a new out_dir for seeds=(...)."
        )
    _claim_settings(paths, True, settings)
    return [(s, RunPaths(paths.seed_dir(s)), f"[seed {s}] ") for s in seeds]


def _print_round(row, prefix, resumed):
    test = "" if row.test_accuracy is None else f", test acc {row.test_accuracy:.2%}"
    barrier = "" if row.error_barrier is None else f", error barrier {row.error_barrier:.2%}"
    print(
        f"{prefix}[{row.arm}] round {row.round}: {row.remaining:.1%} of weights remain, "
        f"best val acc {row.best_val_accuracy:.2%}{test} (early stop epoch "
        f"{row.early_stop_epoch}){barrier}, {row.seconds:.1f} s"
        + (" (finished earlier, loaded from disk)" if resumed else ""),
        flush=True,
    )


def _run_seed(experiment, rounds, arms, prefix):
    """Runs the trainings of one seed's `arms` that are not finished yet.

    A control's round whose ticket round is not finished (by another process)
    is left for a later call.
    """
    paths = experiment.paths
    waiting = []
    for arm, round_index in _trainings(rounds, list(experiment.controls)):
        if arm not in arms:
            continue
        if arm == TICKET and round_index > 0:
            reached = experiment.reached(round_index - 1)
            if reached is not None and reached.meets:
                if experiment.verbose:
                    print(
                        f"{prefix}[ticket] round {round_index - 1} meets the target, so the run "
                        f"stops there: {reached}",
                        flush=True,
                    )
                break
        if arm != TICKET and not os.path.isdir(paths.round_dir(TICKET, round_index)):
            waiting.append(f"{arm} round {round_index}")
            continue
        resumed = os.path.isdir(paths.round_dir(arm, round_index))
        if not resumed:
            experiment.run_round(arm, round_index)
        history = collect_history(paths.root)
        if experiment.verbose:
            row = next(r for r in history.rows if (r.arm, r.round) == (arm, round_index))
            _print_round(row, prefix, resumed)
    if waiting and experiment.verbose:
        print(
            f"{prefix}Not started, as their ticket rounds are not finished yet: "
            f"{', '.join(waiting)}. Run again once they are.",
            flush=True,
        )


def find_winning_ticket(
    build_model,
    train_data,
    *,
    validation_data,
    test_data=None,
    criterion=None,
    rounds,
    epochs_per_round,
    rewind="init",
    controls=(),
    out_dir,
    seed=0,
    seeds=None,
    instability_points=None,
    target=None,
    arms=None,
    compile_kwargs=None,
    fit_kwargs=None,
    keep_weights="compressed",
    verbose=1,
):
    """Runs iterative magnitude pruning with rewinding, one training per round.

    Round 0 trains the dense network from θ0. Each later round prunes the
    previous round's trained weights with `criterion`, resets the survivors
    (to θ0 with `rewind="init"`, to round 0's weights after `k` epochs with
    `rewind=k`, or not at all with `rewind=None`) and trains `epochs_per_round`
    epochs with a fresh optimizer. Controls use the same seed and epochs, and
    each of their rounds the ticket's sparsity of that round.

    Args:
        build_model: A function returning a Keras model, compiled or not (then
            pass `compile_kwargs`). It may contain `PruneWrapper`s; otherwise it
            is wrapped with `tf_lottery.wrap`. It must return the same
            architecture on every call (layers are matched by position, so it
            need not name them); a model of another architecture is refused.
        train_data: `(x, y)` arrays or a `tf.data.Dataset` of batches.
        validation_data: `(x, y)` or a dataset; its loss picks the early-stop
            epoch and its accuracy the best validation accuracy.
        test_data: Optional `(x, y)` or dataset, evaluated after every epoch.
        criterion: A criterion; defaults to `PruneFraction(0.2)` (20% per round,
            10% for the output layer).
        rounds: Number of pruning rounds after the dense round.
        epochs_per_round: Training epochs in every round.
        rewind: `"init"`, an epoch count `k < epochs_per_round`, or `None`.
            Defaults to `"init"`.
        controls: Arms to train beside the ticket (see `tf_lottery.controls`):
            `"reinit"` (the ticket's masks, new random weights), `"random_prune"`
            (random masks, the ticket's per-layer sparsity), `"random_global"`
            and `"random_even"` (random masks, the ticket's overall sparsity,
            spread over all weights at once or equally over the layers), and
            pruning-at-initialization criteria such as `tf_lottery.SNIP(data=...)`,
            `tf_lottery.SynFlow()` or `tf_lottery.GraSP(data=...)` (θ0 pruned to
            the ticket's overall sparsity, their own per-layer spread). Each at
            most once. Defaults to `()`.
        out_dir: Folder for the artifacts (see `tf_lottery.paths`). Started again
            with the same settings, the run skips finished rounds; with other
            settings it is refused. `rounds` may grow to extend a run, and
            `seeds` to add seeds.
        seed: Seed of initialization, data order and controls, for a run with
            one seed in `out_dir` itself. Defaults to `0`.
        seeds: Distinct non-negative integers: run the whole experiment once per
            seed, each in `out_dir/seed_<seed>/`, and summarize across seeds
            (mean, standard deviation, minimum, maximum and count per round; see
            `LotteryHistory.summary`). Other processes may run other seeds into
            the same `out_dir` at the same time. Use either `seed` or `seeds`.
            Defaults to `None`.
        instability_points: With an integer >= 3, every round also trains a
            second copy from the round's starting point (same masks, another
            data order) and records the error barrier along the straight line
            between the two networks at this many points (see
            `tf_lottery.instability`), in `RoundResult.error_barrier` and the
            round's instability.json. Doubles the training time. Defaults to
            `None`.
        target: A `tf_lottery.Target` (MACs, parameters or latency after
            `shrink`) with a unit criterion: each round prunes the criterion's
            rate until the next would pass the target, that round prunes as
            few units as meet it, and the run stops after the first round that
            meets it (`rounds` is then an upper bound). Defaults to `None`.
        arms: The arms this call trains, by name (`"ticket"` and control
            names); the others are left as they are. Processes can split one
            seed this way: the ticket's rounds form a chain, and a control's
            round N needs only the ticket's round N, so a call with the controls
            alone trains those whose ticket round is finished and leaves the
            rest for a later call. Not a setting: calls may differ in it.
            Defaults to `None`: the ticket and every control.
        compile_kwargs: Keyword arguments of `model.compile`, if `build_model`
            does not compile. Defaults to `None`.
        fit_kwargs: Extra keyword arguments of `model.fit`, e.g. `batch_size`.
            Defaults to `None`.
        keep_weights: `"compressed"` keeps, per round, the boolean masks and the
            trained weights in compressed `.npz` files (about 1 MB per round for
            LeNet-300-100, less as it gets sparser), enough for `load_round` and
            to resume. `"full"` also keeps each round's start and trained weights
            as Keras `.weights.h5` files (several MB each) for
            `model.load_weights`. It does not change results, so a run may be
            resumed with the other value. Defaults to `"compressed"`.
        verbose: `0` silent, `1` one line per round, `2` adds Keras' progress bar.
            Defaults to `1`.

    Returns:
        A `LotteryHistory` of every finished round in `out_dir` (of every seed,
        also those run by other processes), also saved as `out_dir/history.json`,
        `history.csv` and `summary.csv`.

    Example:

    ```python
    history = tf_lottery.find_winning_ticket(
        build_lenet, (x_train, y_train), validation_data=(x_val, y_val),
        test_data=(x_test, y_test), rounds=10, epochs_per_round=8,
        controls=["reinit", "random_prune"], seeds=(0, 1, 2), out_dir="runs/lenet",
        fit_kwargs={"batch_size": 60})
    print(history)                   # mean ± std across the three seeds
    tf_lottery.plot_history(history, "runs/lenet/lottery.png")
    ```
    """
    criterion = PruneFraction(0.2) if criterion is None else criterion
    _check_arguments(build_model, criterion, rounds, epochs_per_round, seed, rewind, out_dir)
    seeds = None if seeds is None else _check_seeds(seeds, seed)
    if instability_points is not None:
        check_points(instability_points, "instability_points")
    controls = check_controls(controls, rewind)
    target = None if target is None else check_target(target, criterion)
    arms = _check_arms(arms, controls)
    if keep_weights not in KEEP_WEIGHTS:
        raise ValueError(
            f"Expected keep_weights to be one of {KEEP_WEIGHTS}. "
            f"Received: keep_weights={keep_weights!r}"
        )
    fit_kwargs = dict(fit_kwargs or {})
    for reserved in ("epochs", "validation_data", "x", "y"):
        if reserved in fit_kwargs:
            raise ValueError(f"fit_kwargs may not set {reserved!r}; find_winning_ticket sets it.")
    settings = {
        "build_model": getattr(build_model, "__qualname__", repr(build_model)),
        "criterion": {"class": type(criterion).__name__, **criterion.get_config()},
        "epochs_per_round": epochs_per_round,
        "rewind": rewind,
        "controls": [describe_control(c, _fingerprint) for c in controls],
        "compile_kwargs": _describe(compile_kwargs),
        "fit_kwargs": _describe(fit_kwargs),
        "train_data": _fingerprint(train_data),
        "validation_data": _fingerprint(validation_data),
        "test_data": None if test_data is None else _fingerprint(test_data),
        "instability_points": instability_points,
    }
    if target is not None:  # left out otherwise: runs saved before resume
        settings["target"] = target.get_config()
    settings = json.loads(json.dumps(settings))
    for run_seed, run_paths, prefix in _units(RunPaths(out_dir), seed, seeds, settings):
        experiment = _Experiment(
            build_model,
            train_data,
            validation_data,
            test_data,
            criterion,
            epochs_per_round,
            rewind,
            run_seed,
            compile_kwargs,
            fit_kwargs,
            run_paths,
            verbose,
            keep_weights,
            controls={name_of(c): c for c in controls},
            instability_points=instability_points,
            target=target,
        )
        saved = _claim_settings(
            run_paths,
            False,
            {**settings, "seed": run_seed},
            lambda experiment=experiment: describe_layers(experiment.new_model(experiment.seed)),
        )
        experiment.layers = saved["layers"]
        _run_seed(experiment, rounds, arms, prefix)
        if seeds is not None:
            collect_history(out_dir)
    return collect_history(out_dir)


def load_round(build_model, out_dir, round_index, arm=TICKET, compile_kwargs=None, seed=None):
    """Rebuilds the trained model of one round from its artifacts.

    Args:
        build_model: The same function given to `find_winning_ticket`.
        out_dir: The experiment's folder.
        round_index: Which round.
        arm: `"ticket"` or a control's name, e.g. `"reinit"` or `"snip"`.
            Defaults to `"ticket"`.
        compile_kwargs: As given to `find_winning_ticket`, if any; to evaluate or
            train the model. Not needed for inference (`predict`, `sparsity`,
            export). Defaults to `None`.
        seed: Which seed of a sweep (`seeds=...`); not needed for a run with
            one seed. Defaults to `None`.

    Returns:
        The wrapped model with that round's masks and trained weights, and the
        arm's θ0 as its initial weights; compiled if `build_model` compiles it
        or `compile_kwargs` are given.

    Example:

    ```python
    model = tf_lottery.load_round(build_lenet, "runs/lenet", 7, seed=1)
    print(tf_lottery.sparsity(model))
    ```
    """
    paths = RunPaths(out_dir)
    if paths.read_sweep_settings() is not None:
        if seed not in paths.seeds():
            raise ValueError(
                f"out_dir {paths.root!r} holds a sweep over seeds {paths.seeds()}; pass one of "
                f"them. Received: seed={seed!r}"
            )
        paths = RunPaths(paths.seed_dir(seed))
    settings = paths.read_settings()
    folder = paths.round_dir(arm, round_index)
    if settings is None or not os.path.isdir(folder):
        raise ValueError(
            f"No finished round {round_index} of arm {arm!r} in {paths.root!r}. Pass the "
            "out_dir given to find_winning_ticket and a round it has finished."
        )
    if seed is not None and seed != settings["seed"]:
        raise ValueError(
            f"out_dir {paths.root!r} holds the run of seed {settings['seed']}. "
            f"Received: seed={seed!r}"
        )
    experiment = _Experiment(
        build_model,
        seed=settings["seed"],
        compile_kwargs=compile_kwargs,
        paths=paths,
        layers=settings["layers"],
        # With rewind=k the loaded model keeps θ0 and the rewind point (see new_model).
        rewind=settings.get("rewind"),
        caller="load_round",
    )
    return experiment.trained_model(arm, round_index)

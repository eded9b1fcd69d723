"""Lottery-ticket experiments: one training per round, controls, artifacts, resume.

`find_winning_ticket` runs the experiment the way open_lth does: round 0 trains
the dense network; each later round prunes the previous round's trained weights,
rewinds the survivors and trains again. Controls train beside the ticket from the
same seed: `"reinit"` (the ticket's masks, fresh random weights) and
`"random_prune"` (random masks with the ticket's per-layer sparsity, from θ0).
Every round is kept on disk (see `tf_lottery.paths`), and a run started again with
the same `out_dir` skips the rounds it already finished.
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
from tf_lottery.criteria import PruneFraction
from tf_lottery.evaluation import evaluate_metric
from tf_lottery.files import save_figure
from tf_lottery.files import write_atomically
from tf_lottery.paths import FORMAT
from tf_lottery.paths import TICKET
from tf_lottery.paths import RunPaths
from tf_lottery.report import sparsity
from tf_lottery.transforms import wrap
from tf_lottery.validators import check_criterion
from tf_lottery.validators import check_int
from tf_lottery.validators import is_int
from tf_lottery.wrapper import find_wrappers

CONTROLS = ("reinit", "random_prune")
KEEP_WEIGHTS = ("compressed", "full")


@dataclasses.dataclass(frozen=True)
class RoundResult:
    """One round of one arm.

    Attributes:
        arm: `"ticket"`, `"reinit"` or `"random_prune"`.
        round: Round index; 0 is the dense network.
        remaining: Fraction of prunable weights remaining.
        best_val_accuracy: Best validation accuracy over the round's epochs.
        early_stop_epoch: Epoch (from 1) of minimum validation loss.
        test_accuracy: Test accuracy at the early-stop epoch, or `None` without
            test data.
        final_test_accuracy: Test accuracy after the last epoch, or `None`.
        seconds: Wall time of the round's training.
    """

    arm: str
    round: int
    remaining: float
    best_val_accuracy: float
    early_stop_epoch: int
    test_accuracy: float | None
    final_test_accuracy: float | None
    seconds: float


class LotteryHistory:
    """The results of `find_winning_ticket`: one `RoundResult` per round and arm.

    Prints as a table; `to_json`/`to_csv` save it, `LotteryHistory.from_json`
    reads it back, and `plot_history` draws it.
    """

    def __init__(self, rows=()):
        self.rows = list(rows)

    @property
    def arms(self):
        """The arms in the order they first appear."""
        return list(dict.fromkeys(row.arm for row in self.rows))

    def arm(self, name):
        """The rows of one arm, by round."""
        return sorted((r for r in self.rows if r.arm == name), key=lambda r: r.round)

    def __str__(self):
        lines = [
            f"{'arm':<13} {'round':>5} {'remaining':>9} {'best val acc':>12} "
            f"{'test acc @ES':>12} {'ES epoch':>8} {'seconds':>8}"
        ]
        for row in sorted(self.rows, key=lambda r: (r.round, self.arms.index(r.arm))):
            test = "-" if row.test_accuracy is None else f"{row.test_accuracy:.2%}"
            lines.append(
                f"{row.arm:<13} {row.round:>5} {row.remaining:>9.1%} {row.best_val_accuracy:>12.2%} "
                f"{test:>12} {row.early_stop_epoch:>8} {row.seconds:>8.1f}"
            )
        return "\n".join(lines)

    __repr__ = __str__

    def to_dicts(self):
        return [dataclasses.asdict(row) for row in self.rows]

    def to_json(self, path):
        """Writes the rows as a JSON list."""
        write_atomically(path, json.dumps(self.to_dicts(), indent=2))

    def to_csv(self, path):
        """Writes the rows as CSV with a header."""
        fields = [f.name for f in dataclasses.fields(RoundResult)]
        lines = [",".join(fields)]
        for row in self.to_dicts():
            lines.append(",".join("" if row[f] is None else str(row[f]) for f in fields))
        write_atomically(path, "\n".join(lines) + "\n")

    @classmethod
    def from_json(cls, path):
        with open(path) as file:
            return cls(RoundResult(**row) for row in json.load(file))


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
            for wrapper in find_wrappers(self.model):
                wrapper.save_rewind_point(epoch)
            save_state(self.model, self.rewind_path)

    def on_epoch_end(self, epoch, logs=None):
        record = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
        if self.test_data is not None:
            record["test_accuracy"] = evaluate_metric(self.model, self.test_data, _accuracy_key)
        self.epochs.append(record)


def _random_masks(masks, rng):
    """Random masks with the same number of survivors per tensor."""
    result = {}
    for key, mask in masks.items():
        flat = np.zeros(mask.size, dtype=mask.dtype)
        flat[rng.permutation(mask.size)[: int(mask.sum())]] = 1
        result[key] = flat.reshape(mask.shape)
    return result


def _fingerprint(data):
    """A short hash of a dataset's arrays, so a resumed run checks its data."""
    if not isinstance(data, tuple):
        return type(data).__name__
    digest = hashlib.sha256()
    for array in data:
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


def _open_run(paths, settings, first_model):
    """The run's layers: from its settings.json, or from `first_model()` for a new run.

    A new run writes its settings; an existing one must have the same settings.
    """
    saved = paths.read_settings()
    if saved is None:
        layers = describe_layers(first_model())
        os.makedirs(paths.root, exist_ok=True)
        written = {"format": FORMAT, **settings, "layers": layers}
        write_atomically(paths.settings, json.dumps(written, indent=2))
        return layers
    different = sorted(
        k
        for k in set(saved) | set(settings)
        if k not in ("format", "layers") and saved.get(k) != settings.get(k)
    )
    if different:
        details = "; ".join(
            f"{k}: {saved.get(k)!r} on disk, {settings.get(k)!r} now" for k in different
        )
        raise ValueError(
            f"out_dir {paths.root!r} holds a run with other settings ({details}). Use a new "
            "out_dir, or the same settings to resume that run."
        )
    return saved["layers"]


@dataclasses.dataclass
class _Experiment:
    """The state shared by the rounds of one `find_winning_ticket` call.

    `layers` describes the run's first model; every model built afterwards must
    match it (see `tf_lottery.artifacts`).
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

    def new_model(self, seed):
        """A freshly initialized, wrapped and compiled model."""
        keras.utils.set_random_seed(seed)
        model = self.build_model()
        if not isinstance(model, keras.Model):
            raise ValueError(
                f"build_model must return a Keras model. Received: {type(model).__name__}"
            )
        if not find_wrappers(model):
            compiled = model.compiled
            config = model.get_compile_config() if compiled else None
            model = wrap(model)
            if config is not None and not self.compile_kwargs:
                model.compile_from_config(config)
        if self.layers is not None:
            check_layers(self.layers, model, self.paths.settings)
        if self.compile_kwargs:
            kwargs = dict(self.compile_kwargs)
            optimizer = kwargs.get("optimizer")
            if isinstance(optimizer, keras.optimizers.Optimizer):
                # One optimizer per round: a built optimizer cannot move to new variables.
                kwargs["optimizer"] = optimizer.__class__.from_config(optimizer.get_config())
            model.compile(**kwargs)
        if not model.compiled:
            raise ValueError(
                "find_winning_ticket needs a compiled model: have build_model compile it, or "
                "pass compile_kwargs=dict(optimizer=..., loss=..., metrics=['accuracy'])."
            )
        return model

    def initial_model(self, arm, round_index):
        """A model holding the arm's θ0, and the ticket's rewind point once there is one.

        θ0 is the run's (initial.npz, written by the first call) except for the
        reinit control, which draws new weights every round.
        """
        if arm == "reinit" and round_index > 0:
            return self.new_model(self.seed + 7919 * round_index)
        model = self.new_model(self.seed)
        if not os.path.exists(self.paths.initial_weights):
            save_state(model, self.paths.initial_weights)
            return model
        load_state(model, self.paths.initial_weights)
        for wrapper in find_wrappers(model):
            wrapper.save_initial_weights()
        rewind_point = RunPaths.rewind_point(self.paths.round_dir(TICKET, 0))
        if arm == TICKET and os.path.exists(rewind_point):
            load_state(model, rewind_point)
            for wrapper in find_wrappers(model):
                wrapper.save_rewind_point(int(keras.ops.convert_to_numpy(wrapper.rewind_epoch)))
        return model

    def trained_model(self, arm, round_index):
        """The model a finished round ended with: θ0, masks and trained weights."""
        folder = self.paths.round_dir(arm, round_index)
        model = self.initial_model(arm, round_index)
        with np.load(RunPaths.masks(folder)) as archive:
            set_masks(model, dict(archive), self.layers)
        load_state(model, RunPaths.trained_weights(folder))
        return model

    def start_model(self, arm, round_index):
        """The model a round trains, with its masks set and its weights rewound."""
        if round_index == 0:
            return self.initial_model(TICKET, 0)
        if arm == TICKET:
            trained = self.trained_model(TICKET, round_index - 1)
            pruning.prune(trained, self.criterion)
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
        with np.load(RunPaths.masks(self.paths.round_dir(TICKET, round_index))) as archive:
            masks = dict(archive)
        if arm == "random_prune":
            masks = _random_masks(masks, np.random.default_rng(self.seed + round_index))
        model = self.initial_model(arm, round_index)
        set_masks(model, masks, self.layers)
        if arm == "reinit":  # the ticket's units; its trained state holds its unit masks
            copy_unit_masks(self.trained_model(TICKET, round_index), model)
        return model

    def fit(self, model, folder, round_index):
        rewind_epoch = self.rewind if isinstance(self.rewind, int) and round_index == 0 else None
        recorder = _RecordEpochs(self.test_data, rewind_epoch, RunPaths.rewind_point(folder))
        kwargs = dict(self.fit_kwargs)
        kwargs.setdefault("verbose", 1 if self.verbose >= 2 else 0)
        kwargs["callbacks"] = [recorder, *kwargs.get("callbacks", [])]
        keras.utils.set_random_seed(self.seed + 1 + round_index)
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
        folder = self.paths.round_dir(arm, round_index)
        partial = self.paths.partial_dir(arm, round_index)
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        model = self.start_model(arm, round_index)
        save_arrays(RunPaths.masks(partial), masks_of(model, self.layers))
        if self.keep_weights == "full":
            model.save_weights(RunPaths.keras_start_weights(partial))
        epochs, seconds = self.fit(model, partial, round_index)
        save_state(model, RunPaths.trained_weights(partial))
        if self.keep_weights == "full":
            model.save_weights(RunPaths.keras_trained_weights(partial))
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
        }
        # The run's layer names, which a builder that leaves naming to Keras
        # changes from call to call.
        names = {w.layer.name: layer["name"] for w, layer in zip(find_wrappers(model), self.layers)}
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
        write_atomically(RunPaths.report(partial), json.dumps({**record, **details}, indent=2))
        os.replace(partial, folder)


def _load_result(paths, arm, round_index):
    with open(RunPaths.report(paths.round_dir(arm, round_index))) as file:
        report = json.load(file)
    return RoundResult(**{f.name: report[f.name] for f in dataclasses.fields(RoundResult)})


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
    epochs with a fresh optimizer. Controls use the same seed and epochs.

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
        controls: Any of `"reinit"` and `"random_prune"`. Defaults to `()`.
        out_dir: Folder for the artifacts (see `tf_lottery.paths`). Started again
            with the same settings, the run skips finished rounds; with other
            settings it is refused. `rounds` may grow to extend a run.
        seed: Seed of initialization, data order and controls. Defaults to `0`.
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
        A `LotteryHistory`, also saved as `out_dir/history.json` and `.csv`.

    Example:

    ```python
    history = tf_lottery.find_winning_ticket(
        build_lenet, (x_train, y_train), validation_data=(x_val, y_val),
        test_data=(x_test, y_test), rounds=10, epochs_per_round=8,
        controls=["reinit"], out_dir="runs/lenet", fit_kwargs={"batch_size": 60})
    print(history)
    tf_lottery.plot_history(history, "runs/lenet/lottery.png")
    ```
    """
    criterion = PruneFraction(0.2) if criterion is None else criterion
    check_criterion(criterion)
    if not callable(build_model):
        raise ValueError(
            f"Expected build_model to be a function returning a Keras model. Received: {build_model!r}"
        )
    check_int(rounds, "rounds")
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
    controls = (controls,) if isinstance(controls, str) else tuple(controls)
    unknown = [c for c in controls if c not in CONTROLS]
    if unknown or len(set(controls)) != len(controls):
        raise ValueError(
            f"Expected controls from {CONTROLS}, each once. Received: controls={controls!r}"
        )
    if rewind is None and "reinit" in controls:
        raise ValueError(
            "The 'reinit' control compares with rewinding; it needs rewind='init' or an int."
        )
    if not isinstance(out_dir, (str, os.PathLike)):
        raise ValueError(f"Expected out_dir to be a folder path. Received: out_dir={out_dir!r}")
    if keep_weights not in KEEP_WEIGHTS:
        raise ValueError(
            f"Expected keep_weights to be one of {KEEP_WEIGHTS}. "
            f"Received: keep_weights={keep_weights!r}"
        )
    fit_kwargs = dict(fit_kwargs or {})
    for reserved in ("epochs", "validation_data", "x", "y"):
        if reserved in fit_kwargs:
            raise ValueError(f"fit_kwargs may not set {reserved!r}; find_winning_ticket sets it.")
    paths = RunPaths(out_dir)
    settings = {
        "build_model": getattr(build_model, "__qualname__", repr(build_model)),
        "criterion": {"class": type(criterion).__name__, **criterion.get_config()},
        "epochs_per_round": epochs_per_round,
        "rewind": rewind,
        "controls": list(controls),
        "seed": seed,
        "compile_kwargs": _describe(compile_kwargs),
        "fit_kwargs": _describe(fit_kwargs),
        "train_data": _fingerprint(train_data),
        "validation_data": _fingerprint(validation_data),
        "test_data": None if test_data is None else _fingerprint(test_data),
    }
    experiment = _Experiment(
        build_model,
        train_data,
        validation_data,
        test_data,
        criterion,
        epochs_per_round,
        rewind,
        seed,
        compile_kwargs,
        fit_kwargs,
        paths,
        verbose,
        keep_weights,
    )
    experiment.layers = _open_run(
        paths, json.loads(json.dumps(settings)), lambda: experiment.new_model(seed)
    )
    history = LotteryHistory()
    for round_index in range(rounds + 1):
        for arm in (TICKET, *controls) if round_index else (TICKET,):
            resumed = os.path.isdir(paths.round_dir(arm, round_index))
            if not resumed:
                experiment.run_round(arm, round_index)
            row = _load_result(paths, arm, round_index)
            history.rows.append(row)
            history.to_json(paths.history_json)
            history.to_csv(paths.history_csv)
            if verbose:
                test = "" if row.test_accuracy is None else f", test acc {row.test_accuracy:.2%}"
                print(
                    f"[{arm}] round {round_index}: {row.remaining:.1%} of weights remain, "
                    f"best val acc {row.best_val_accuracy:.2%}{test} (early stop epoch "
                    f"{row.early_stop_epoch}), {row.seconds:.1f} s"
                    + (" (finished earlier, loaded from disk)" if resumed else ""),
                    flush=True,
                )
    return history


def load_round(build_model, out_dir, round_index, arm=TICKET, compile_kwargs=None):
    """Rebuilds the trained model of one round from its artifacts.

    Args:
        build_model: The same function given to `find_winning_ticket`.
        out_dir: The experiment's folder.
        round_index: Which round.
        arm: `"ticket"`, `"reinit"` or `"random_prune"`. Defaults to `"ticket"`.
        compile_kwargs: As given to `find_winning_ticket`, if any.

    Returns:
        The wrapped, compiled model with that round's masks and trained
        weights, and the arm's θ0 as its initial weights.

    Example:

    ```python
    model = tf_lottery.load_round(build_lenet, "runs/lenet", 7)
    print(tf_lottery.sparsity(model))
    ```
    """
    paths = RunPaths(out_dir)
    settings = paths.read_settings()
    folder = paths.round_dir(arm, round_index)
    if settings is None or not os.path.isdir(folder):
        raise ValueError(
            f"No finished round {round_index} of arm {arm!r} in {paths.root!r}. Pass the "
            "out_dir given to find_winning_ticket and a round it has finished."
        )
    experiment = _Experiment(
        build_model,
        seed=settings["seed"],
        compile_kwargs=compile_kwargs,
        paths=paths,
        layers=settings["layers"],
    )
    return experiment.trained_model(arm, round_index)


def plot_history(history, path):
    """Draws test accuracy and early-stop epoch against weights remaining.

    As in Frankle & Carbin's figures: log-scale x axis with 100% at the left, one
    line per arm. Uses best validation accuracy where there was no test data.

    Args:
        history: A `LotteryHistory`.
        path: The PNG file to write (atomically).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib import ticker

    figure, (accuracy_axis, epoch_axis) = plt.subplots(1, 2, figsize=(11, 4))
    dense = [r for r in history.arm(TICKET) if r.round == 0]
    for arm in history.arms:
        # Every arm starts from the same dense network, round 0 of the ticket.
        rows = history.arm(arm) if arm == TICKET else dense + history.arm(arm)
        remaining = [100 * r.remaining for r in rows]
        accuracy = [
            100 * (r.best_val_accuracy if r.test_accuracy is None else r.test_accuracy)
            for r in rows
        ]
        accuracy_axis.plot(remaining, accuracy, marker="o", label=arm)
        epoch_axis.plot(remaining, [r.early_stop_epoch for r in rows], marker="o", label=arm)
    has_test = all(r.test_accuracy is not None for r in history.rows)
    accuracy_axis.set_ylabel(
        "test accuracy at early stop (%)" if has_test else "best validation accuracy (%)"
    )
    epoch_axis.set_ylabel("early-stop epoch (min. validation loss)")
    for axis in (accuracy_axis, epoch_axis):
        axis.set_xscale("log")
        axis.set_xlim(110, min(100 * r.remaining for r in history.rows) * 0.8)
        axis.xaxis.set_major_locator(ticker.FixedLocator([100, 50, 20, 10, 5, 2, 1, 0.5, 0.2, 0.1]))
        axis.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        axis.xaxis.set_minor_formatter(ticker.NullFormatter())
        axis.set_xlabel("weights remaining (%)")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    figure.tight_layout()
    save_figure(figure, path)

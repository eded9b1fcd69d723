"""`SeedRun`: the models and rounds of one seed's lottery run, as kept on disk.

`find_winning_ticket` makes one per seed; `load_round` makes one to rebuild a
finished round. Every model comes from the run's `build_model` and is matched
to the run's first model by position (see `tf_lottery.experiments.artifacts`).
"""

import dataclasses
import json
import math
import os
import shutil
import time

import keras
import numpy as np

from tf_lottery import pruning
from tf_lottery.experiments.artifacts import check_layers
from tf_lottery.experiments.artifacts import copy_unit_masks
from tf_lottery.experiments.artifacts import describe_layers
from tf_lottery.experiments.artifacts import load_state
from tf_lottery.experiments.artifacts import masks_of
from tf_lottery.experiments.artifacts import save_arrays
from tf_lottery.experiments.artifacts import save_state
from tf_lottery.experiments.artifacts import set_masks
from tf_lottery.experiments.artifacts import thresholds_of
from tf_lottery.experiments.controls import random_masks
from tf_lottery.experiments.controls import remaining
from tf_lottery.experiments.evaluation import evaluate_metric
from tf_lottery.experiments.instability import interpolate
from tf_lottery.experiments.paths import TICKET
from tf_lottery.experiments.paths import RunPaths
from tf_lottery.experiments.run_config import RunConfig
from tf_lottery.files import write_atomically
from tf_lottery.init_criteria import InitCriterion
from tf_lottery.report import sparsity
from tf_lottery.structured.target import estimate
from tf_lottery.structured.target import prune_toward
from tf_lottery.transforms import wrap
from tf_lottery.validators import is_int
from tf_lottery.wrapper import find_rewind_wrappers
from tf_lottery.wrapper import find_wrappers

# Added to the seed of the second copy's data order in an instability analysis,
# so that it differs from the data order of every round's own training.
_INSTABILITY_SEED = 104729


def accuracy_key(logs, prefix=""):
    """The accuracy metric's key in `logs` (with `prefix="val_"`, the validation one)."""
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
            record["test_accuracy"] = evaluate_metric(self.model, self.test_data, accuracy_key)
        self.epochs.append(record)


def _rewind_epoch(model):
    """The epoch of the run's rewind point, -1 before there is one.

    One epoch for every wrapper: files written before issue 18's bug 2 was fixed
    hold it only in the PruneWrappers, the RewindWrappers' (BatchNormalization's)
    reading -1, as if none were saved.
    """
    epochs = [int(keras.ops.convert_to_numpy(w.rewind_epoch)) for w in pruning.rewindable(model)]
    return max(epochs, default=-1)


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
class SeedRun:
    """One seed's run of `config` in `paths`.

    `layers` describes the run's first model (settings.json); every model built
    afterwards must match it. `caller` names who builds the models, for the
    messages; load_round's models are for inference and need no compile.
    """

    config: RunConfig
    seed: int
    paths: RunPaths
    layers: list = None
    caller: str = "find_winning_ticket"

    def new_model(self, seed):
        """A freshly initialized, wrapped and compiled model."""
        keras.utils.set_random_seed(seed)
        model = self.config.build_model()
        if not isinstance(model, keras.Model):
            raise ValueError(
                f"{self.caller} needs a build_model that returns a Keras model. "
                f"Received: {type(model).__name__}"
            )
        compile_kwargs = self.config.compile_kwargs
        if not find_wrappers(model):
            config = model.get_compile_config() if model.compiled else None
            # A loaded round holds θ0, and the rewind point too with rewind=k.
            model = wrap(model, keep="both" if is_int(self.config.rewind) else "rewind")
            if config is not None and not compile_kwargs:
                model.compile_from_config(config)
        if self.layers is not None:
            check_layers(self.layers, model, self.paths.settings, self.caller)
        if compile_kwargs:
            kwargs = dict(compile_kwargs)
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

    def first_layers(self):
        """The layers of a model built with the run's seed, for settings.json."""
        return describe_layers(self.new_model(self.seed))

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
            epoch = _rewind_epoch(model)
            for wrapper in pruning.rewindable(model):
                wrapper.save_rewind_point(epoch)
        return model

    def trained_model(self, arm, round_index):
        """The model a finished round ended with: θ0, masks and trained weights."""
        folder = self.paths.round_dir(arm, round_index)
        model = self.initial_model(arm, round_index)
        with np.load(RunPaths.masks(folder)) as archive:
            set_masks(model, dict(archive), self.layers)
        epoch = _rewind_epoch(model)
        load_state(model, RunPaths.trained_weights(folder))
        if epoch >= 0:  # the trained state's copy may read -1
            for wrapper in pruning.rewindable(model):
                wrapper.rewind_epoch.assign(epoch)
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
            return self.pruned_ticket(round_index)
        ticket = self.ticket_masks(round_index)
        control = self.config.arms[arm]
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

    def pruned_ticket(self, round_index):
        """The ticket's previous round pruned, then rewound as `tf_lottery.rewind` does,
        with its optimizer reset."""
        model = self.trained_model(TICKET, round_index - 1)
        if self.config.target is None:
            pruning.prune(model, self.config.criterion)
        else:
            prune_toward(model, self.config.criterion, self.config.target)
        if self.config.rewind is not None:
            pruning.rewind(model, "initial" if self.config.rewind == "init" else "rewind_point")
            pruning.reset_optimizer(model.optimizer)
        return model

    def reached(self, round_index):
        """The `TargetReport` of the ticket's finished round, or `None` without a target."""
        if self.config.target is None:
            return None
        model = self.trained_model(TICKET, round_index)
        return estimate(model, self.config.criterion, self.config.target)

    def fit(self, model, round_index, data_seed, folder=None, test=True):
        """Trains a round; `folder` receives round 0's rewind point, with rewind=k."""
        config = self.config
        rewind_epoch = (
            config.rewind if isinstance(config.rewind, int) and round_index == 0 else None
        )
        recorder = _RecordEpochs(
            config.test_data if test else None,
            rewind_epoch if folder else None,
            folder and RunPaths.rewind_point(folder),
        )
        kwargs = dict(config.fit_kwargs)
        kwargs.setdefault("verbose", 1 if config.verbose >= 2 else 0)
        kwargs["callbacks"] = [recorder, *kwargs.get("callbacks", [])]
        data = config.train_data if isinstance(config.train_data, tuple) else (config.train_data,)
        keras.utils.set_random_seed(data_seed)
        start = time.time()
        model.fit(
            *data, epochs=config.epochs_per_round, validation_data=config.validation_data, **kwargs
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
        """Trains one round, writing its masks, weights and report.json into `folder`."""
        model = self.start_model(arm, round_index)
        if self.config.instability_points:  # the second copy starts where this one does
            start = [keras.ops.convert_to_numpy(v.value) for v in model.weights]
        save_arrays(RunPaths.masks(folder), masks_of(model, self.layers))
        if self.config.keep_weights == "full":
            model.save_weights(RunPaths.keras_start_weights(folder))
        epochs, seconds = self.fit(model, round_index, self.seed + 1 + round_index, folder)
        save_state(model, RunPaths.trained_weights(folder))
        if self.config.keep_weights == "full":
            model.save_weights(RunPaths.keras_trained_weights(folder))
        barrier = None
        if self.config.instability_points:
            barrier = self.measure_instability(model, start, round_index, folder)
        report = self.report(model, arm, round_index, epochs, seconds, barrier)
        write_atomically(RunPaths.report(folder), json.dumps(report, indent=2))

    def report(self, model, arm, round_index, epochs, seconds, error_barrier=None):
        """A round's report.json as a dict: its `RoundResult` fields, then its layers'
        sparsity and thresholds and its epochs."""
        val_key = accuracy_key(epochs[0], "val_")
        if val_key is None or "val_loss" not in epochs[0]:
            raise ValueError(
                "find_winning_ticket needs validation accuracy: compile with "
                f"metrics=['accuracy']. The epoch logs had: {sorted(epochs[0])}"
            )
        early = int(np.argmin([e["val_loss"] for e in epochs]))
        report = sparsity(model)
        # The run's layer names, which a builder that leaves naming to Keras
        # changes from call to call.
        names = {
            w.target_name: layer["name"] for w, layer in zip(find_wrappers(model), self.layers)
        }
        layer_sparsity = report.to_dict()
        for row in layer_sparsity["layers"]:
            row["layer"] = names.get(row["layer"], row["layer"])
        thresholds = thresholds_of(model, self.layers)
        return {
            "arm": arm,
            "round": round_index,
            "remaining": 1.0 - report.sparsity,
            "best_val_accuracy": max(e[val_key] for e in epochs),
            "early_stop_epoch": early + 1,
            "test_accuracy": epochs[early].get("test_accuracy"),
            "final_test_accuracy": epochs[-1].get("test_accuracy"),
            "seconds": seconds,
            "seed": self.seed,
            **({} if error_barrier is None else {"error_barrier": error_barrier}),
            "sparsity": layer_sparsity,
            "thresholds": {k: (None if math.isnan(v) else v) for k, v in thresholds.items()},
            "epochs": epochs,
        }

    def measure_instability(self, trained, start, round_index, folder):
        """The error barrier between `trained` and a copy trained from `start` on another
        data order; the whole path is written to the round's instability.json."""
        config = self.config
        copy = self.new_model(self.seed)
        for variable, value in zip(copy.weights, start):
            variable.assign(value)
        self.fit(copy, round_index, self.seed + _INSTABILITY_SEED + round_index, test=False)
        result = interpolate(
            trained,
            copy,
            config.validation_data if config.test_data is None else config.test_data,
            points=config.instability_points,
            train_data=config.train_data,
            batch_size=config.fit_kwargs.get("batch_size") or 32,
            model=self.new_model(self.seed),
        )
        write_atomically(RunPaths.instability(folder), json.dumps(result.to_dict(), indent=2))
        return result.error_barrier

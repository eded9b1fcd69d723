"""Mask updates between training steps, when step schedules make them due.

Shared by `GradualPruning` and the tfmot compatibility callback. The work per
batch is a few integer operations in Python: the step count lives in a Python
int during the fit, and the model's variables are only touched when an update
is due (and at the end of each epoch, to save the count).
"""

import keras

from tf_lottery import pruning
from tf_lottery.validators import is_int

# No batch seen yet this epoch; not None, which a hand-written loop may pass as its index.
_NO_BATCH = object()


class ScheduledMasks:
    """Counts training steps and updates masks when a schedule makes it due.

    Steps are numbered as tfmot numbers them (see `tf_lottery.schedules`): the
    count is the number of training steps taken so far, kept in every wrapper's
    `pruning_step` variable between fits (so `model.save` keeps it and
    `reset_optimizer` does not touch it), and the step about to run is the
    count plus one. Before each batch, the steps since the previous batch are
    asked for a due update; with `steps_per_execution = N` Keras calls back once
    per N steps, so an update that falls inside a group of N steps happens
    before the next group, with the sparsity of its step.

    The count comes from Keras' batch index where it counts up within an epoch
    (so a group of N steps counts N), and otherwise one step per call, as in a
    hand-written loop that passes no index.

    Args:
        model: The wrapped model.
        wrappers: Its `PruneWrapper`s; their `pruning_step` holds the count.
        groups: `(layers, schedule, criterion)` triples: the names of the
            layers that `schedule` prunes with `criterion`.
    """

    def __init__(self, model, wrappers, groups):
        self.model = model
        self.wrappers = wrappers
        self.groups = groups
        # Training steps taken so far; every step up to _checked was asked.
        self.steps = max(int(keras.ops.convert_to_numpy(w.pruning_step.value)) for w in wrappers)
        self._checked = self.steps
        self._batch = _NO_BATCH
        self._reached = [None] * len(groups)
        self.updates = 0

    def before_batch(self, batch):
        """Counts the steps since the last call and applies a due update."""
        if self._batch is not _NO_BATCH:
            counts_up = is_int(batch) and is_int(self._batch) and batch > self._batch
            self.steps += batch - self._batch if counts_up else 1
        self._batch = batch
        upcoming = self.steps + 1
        for index, (layers, schedule, criterion) in enumerate(self.groups):
            due = schedule.last_due(self._checked + 1, upcoming)
            if due is None:
                continue
            target = schedule(due)[1]
            reached = self._reached[index]
            # Masks only shrink: a target the layers already have changes nothing.
            if target is not None and reached is not None and target <= reached:
                continue
            self._sync()
            pruning.prune(self.model, criterion, layers=layers, sparsity=target)
            self._reached[index] = target
            self.updates += 1
            self.save()
        self._checked = upcoming

    def end_epoch(self, steps):
        """Counts the epoch's last group of steps and saves the count.

        Args:
            steps: The number of steps in the epoch (`params["steps"]`), or
                `None` if Keras does not know it; then the last group counts as
                `steps_per_execution` steps.
        """
        if self._batch is not _NO_BATCH:
            if not is_int(self._batch) or self._batch < 0:
                self.steps += 1
            elif steps is not None:
                self.steps += steps - self._batch
            else:
                self.steps += getattr(self.model, "steps_per_execution", 1) or 1
        self._batch = _NO_BATCH
        self._sync()
        self.save()

    def save(self):
        """Writes the count to every wrapper's `pruning_step`."""
        for wrapper in self.wrappers:
            wrapper.pruning_step.assign(self.steps)

    def _sync(self):
        # On JAX the train step's state lives outside the variables during an
        # epoch: bring it back before reading or writing them between batches.
        sync = getattr(self.model, "jax_state_sync", None)
        if sync is not None:
            sync()

"""tfmot's callbacks: `UpdatePruningStep` prunes, `PruningSummaries` logs."""

import os

import keras
import numpy as np

from tf_lottery.callbacks.scheduled_masks import ScheduledMasks
from tf_lottery.compat.tfmot.sparsity.keras.pruning_wrapper import PruneLowMagnitude
from tf_lottery.wrapper import find_wrappers
from tf_lottery.masking import read_threshold


class UpdatePruningStep(keras.callbacks.Callback):
    """tfmot's `UpdatePruningStep`: advances the step and updates the masks.

    Before each training batch it advances the step and, where a layer's
    schedule makes it due, updates that layer's mask, which the batch then
    trains with: the same steps as tfmot (the first training step is step 1).
    It also works in a hand-written loop that calls only `on_train_begin`,
    `on_train_batch_begin` (with any `batch` argument) and `on_epoch_end`, as
    tfmot's comprehensive guide does: each `on_train_batch_begin` call is then
    one step.

    Example:

    ```python
    model.fit(x, y, epochs=2, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    ```
    """

    def on_train_begin(self, logs=None):
        wrappers = [w for w in find_wrappers(self.model) if isinstance(w, PruneLowMagnitude)]
        # Layers with the same schedule and settings are pruned in one call.
        groups = {}
        for wrapper in wrappers:
            key = (repr(wrapper.schedule), repr(wrapper.criterion))
            groups.setdefault(key, (wrapper.schedule, wrapper.criterion, []))[2].append(
                wrapper.layer.name
            )
        self._masks = None
        if wrappers:
            triples = [
                (layers, schedule, criterion) for schedule, criterion, layers in groups.values()
            ]
            self._masks = ScheduledMasks(self.model, wrappers, triples)

    def on_train_batch_begin(self, batch, logs=None):
        if self._masks is not None:
            self._masks.before_batch(batch)

    def on_epoch_end(self, batch, logs=None):
        if self._masks is not None:
            self._masks.end_epoch((self.params or {}).get("steps"))


class PruningSummaries(keras.callbacks.TensorBoard):
    """tfmot's `PruningSummaries`: TensorBoard plus each mask's sparsity and threshold.

    At the beginning of each epoch it writes `<mask>/sparsity` and
    `<threshold>/threshold` for every pruned weight to `log_dir/metrics`, at
    the optimizer's iteration count. These need TensorFlow only; the epoch
    metrics that `keras.callbacks.TensorBoard` writes need the `tensorboard`
    package too, which TensorFlow no longer installs.

    Args:
        log_dir: The folder for the logs, a non-empty string.
        update_freq: As in `keras.callbacks.TensorBoard`. Defaults to
            `"epoch"`.
        **kwargs: Other `keras.callbacks.TensorBoard` arguments.
    """

    def __init__(self, log_dir, update_freq="epoch", **kwargs):
        if not isinstance(log_dir, str) or not log_dir:
            raise ValueError(
                f"Expected log_dir to be a non-empty string. Received: log_dir={log_dir!r}"
            )
        super().__init__(log_dir=log_dir, update_freq=update_freq, **kwargs)
        import tensorflow as tf  # the summary writer; the rest of tf_lottery does without

        self._tf = tf
        self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "metrics"))

    def on_epoch_begin(self, epoch, logs=None):
        if logs is not None:
            super().on_epoch_begin(epoch, logs)
        values = {}
        for wrapper in find_wrappers(self.model):
            for masked in wrapper.masked_weights:
                mask = keras.ops.convert_to_numpy(masked.mask.value)
                values[f"{masked.mask.path}/sparsity"] = 1 - float(np.mean(mask))
                values[f"{masked.threshold.path}/threshold"] = read_threshold(masked.threshold)
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        # What tf.summary.scalar writes, without the tensorboard package it needs.
        scalar = self._tf.compat.v1.SummaryMetadata()
        scalar.plugin_data.plugin_name = "scalars"
        with self._writer.as_default():
            for name, value in values.items():
                self._tf.summary.write(
                    name, self._tf.constant(value, self._tf.float32), step=step, metadata=scalar
                )
        self._writer.flush()

"""Run by test_distributed, once per process: multi-process JAX data parallelism.

Usage: KERAS_BACKEND=jax python jax_multiprocess_run.py PROCESS_ID PORT WORK_DIR

Joins a two-process JAX run on 127.0.0.1:PORT (CPU collectives over gloo) and
trains a small LeNet-300-100-like MLP with `IterativePruning` under
`keras.distribution.DataParallel`, each process feeding its own shard. Its
current folder (WORK_DIR/disk_<id>) stands for the process's own disk, and
only process 0 writes there: a `ModelCheckpoint` every epoch, `model.keras` at
the end, and a `find_winning_ticket` run in `lottery/`. Every process makes
the same calls (saving creates Keras variables, which under a multi-process
distribution is a collective); the others write to WORK_DIR/scratch_<id>,
which nobody keeps.

For the test, every process also dumps the masks, θ0 and weights of every
wrapped layer at each epoch end to WORK_DIR/dumps/process_<id>/epoch_<e>.npz.
"""

import os
import sys

import jax
import keras
import numpy as np

import tf_lottery as tl

INPUTS, CLASSES, SAMPLES, BATCH = 784, 10, 256, 32
PRUNING = dict(every=2, rounds=2, rewind="init")
EPOCHS = (PRUNING["rounds"] + 1) * PRUNING["every"]


def lenet():
    return keras.Sequential(
        [
            keras.Input((INPUTS,)),
            keras.layers.Dense(64, activation="relu", name="fc1"),
            keras.layers.Dense(32, activation="relu", name="fc2"),
            keras.layers.Dense(CLASSES, name="out"),
        ]
    )


def shard(process_id):
    """This process's own training data: no process sees another's."""
    rng = np.random.default_rng(100 + process_id)
    x = rng.normal(size=(SAMPLES, INPUTS)).astype("float32")
    return x, x[:, :CLASSES].argmax(axis=1).astype("int32")


def compile_kwargs():
    return dict(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def arrays(model):
    """Masks, θ0 and weights of every wrapped layer, by "layer/weight/kind"."""
    found = {}
    for wrapper in tl.find_rewind_wrappers(model):
        for saved in wrapper.saved_weights:
            key = f"{wrapper.layer.name}/{saved.name}"
            found[f"{key}/weight"] = keras.ops.convert_to_numpy(saved.variable.value)
            found[f"{key}/initial"] = keras.ops.convert_to_numpy(saved.initial.value)
            if saved.mask is not None:
                found[f"{key}/mask"] = keras.ops.convert_to_numpy(saved.mask.value)
    return found


class Dump(keras.callbacks.Callback):
    """Saves `arrays(model)` and the round count at every epoch end."""

    def __init__(self, folder, pruning):
        super().__init__()
        self.folder = folder
        self.pruning = pruning

    def on_epoch_end(self, epoch, logs=None):
        path = os.path.join(self.folder, f"epoch_{epoch}.npz")
        np.savez(path, rounds=self.pruning.rounds_done, **arrays(self.model))


def main(process_id, port, work_dir):
    keras.config.disable_traceback_filtering()
    assert keras.backend.backend() == "jax", "run with KERAS_BACKEND=jax"
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    keras.distribution.initialize(
        job_addresses=f"127.0.0.1:{port}", num_processes=2, process_id=process_id
    )
    assert jax.process_count() == 2 and jax.process_index() == process_id
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(
            devices=keras.distribution.list_devices("cpu"), auto_shard_dataset=False
        )
    )
    dumps = os.path.join(work_dir, "dumps", f"process_{process_id}")
    disk = os.path.join(work_dir, f"disk_{process_id}")
    scratch = os.path.join(work_dir, f"scratch_{process_id}")
    for folder in (dumps, disk, scratch):
        os.makedirs(folder)
    os.chdir(disk)

    def kept(path):
        """`path` on process 0; elsewhere the same path in the scratch folder."""
        return path if jax.process_index() == 0 else os.path.join(scratch, path)

    keras.utils.set_random_seed(0)
    model = tl.wrap(lenet())
    model.compile(**compile_kwargs())
    pruning = tl.IterativePruning(tl.PruneFraction(0.5), verbose=0, **PRUNING)
    checkpoint = keras.callbacks.ModelCheckpoint(
        kept("checkpoints/epoch_{epoch}.weights.h5"), save_weights_only=True
    )
    x, y = shard(process_id)
    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=EPOCHS,
        shuffle=False,
        verbose=0,
        callbacks=[pruning, Dump(dumps, pruning), checkpoint],
    )
    model.save(kept("model.keras"))

    tl.find_winning_ticket(
        lenet,
        (x, y),
        validation_data=(x[:64], y[:64]),
        rounds=1,
        epochs_per_round=1,
        out_dir=kept("lottery"),
        compile_kwargs=compile_kwargs(),
        fit_kwargs={"batch_size": BATCH, "shuffle": False},
        verbose=0,
    )
    print(f"process {process_id} done", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])

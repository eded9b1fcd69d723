"""Run by test_reliability in a fresh process: TensorFlow's logical CPU devices
must be set up before anything else touches TensorFlow.

Trains the same wrapped model with IterativePruning under MirroredStrategy on
two logical CPUs (argv[1] == "mirrored") or on one device, and prints the masks,
θ0 and per-replica agreement as JSON.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tf_lottery as tl  # noqa: E402


def main(mode):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 12)).astype("float32")
    y = x[:, :3].argmax(axis=1).astype("int32")
    strategy = (
        tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        if mode == "mirrored"
        else tf.distribute.get_strategy()
    )
    with strategy.scope():
        model = tl.wrap(
            keras.Sequential(
                [
                    keras.Input((12,)),
                    keras.layers.Dense(16, activation="relu", name="fc1"),
                    keras.layers.Dense(3, name="out"),
                ]
            )
        )
        model.compile(
            keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
    pruning = tl.IterativePruning(tl.PruneFraction(0.5), every=2, rewind="init", verbose=0)
    model.fit(x, y, batch_size=64, epochs=4, shuffle=False, verbose=0, callbacks=[pruning])
    result = {"masks": {}, "initial": {}, "replicas_agree": True, "pruned_are_zero": True}
    for wrapper in tl.find_wrappers(model):
        for masked in wrapper.masked_weights:
            result["masks"][wrapper.layer.name] = masked.mask.numpy().tolist()
            pruned = masked.mask.numpy() == 0
            result["pruned_are_zero"] &= bool(np.all(masked.variable.numpy()[pruned] == 0))
        for saved in wrapper.saved_weights:
            result["initial"][f"{wrapper.layer.name}/{saved.name}"] = saved.initial.numpy().tolist()
        for variable in wrapper.weights:
            # The backing tf.Variable; under MirroredStrategy one copy per replica.
            copies = strategy.experimental_local_results(variable._value)
            result["copies"] = len(copies)
            first = copies[0].numpy()
            result["replicas_agree"] &= all(np.array_equal(first, c.numpy()) for c in copies[1:])
    result["replicas"] = strategy.num_replicas_in_sync
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])

"""Prunes LeNet-300-100 for TFLite and exports it in every mode, with reports.

Dense kernels are pruned in the blocks TFLite's sparse kernels use
(`block="tflite-int8"`: 16x1 blocks, which are also the 4x1 blocks of the float
kernels), Han-style: prune, keep training, prune again, until `--sparsity`.
Each export is loaded in LiteRT and its test accuracy printed beside Keras'.

    python examples/export_tflite.py --sparsity=0.92 --out_dir=/tmp/lenet_tflite
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# First: tf_lottery loads Keras with TensorFlow's start-up logs kept out of the output.
import tf_lottery  # noqa: E402
import keras  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import mnist  # noqa: E402
from models import classifier_compile_kwargs  # noqa: E402
from models import lenet_300_100  # noqa: E402


flags.DEFINE_float(
    "sparsity", 0.92, "Overall sparsity to reach (Han et al.: 92%, 12x fewer weights)."
)
flags.DEFINE_string("out_dir", "tflite_export", "Folder for the .tflite files.")
flags.adopt_module_key_flags(mnist)  # --help lists the shared data flags too
FLAGS = flags.FLAGS


def main(argv):
    del argv
    keras.utils.set_random_seed(FLAGS.seed)
    data = mnist.load()
    model = tf_lottery.wrap(lenet_300_100())
    model.compile(**classifier_compile_kwargs(FLAGS.learning_rate))
    fit = dict(
        batch_size=FLAGS.batch_size,
        verbose=0,
        validation_data=(data.validation.x, data.validation.y),
    )
    model.fit(data.train.x, data.train.y, epochs=8, **fit)
    pruning = tf_lottery.IterativePruning(
        tf_lottery.PruneFraction(0.3, block="tflite-int8"),
        every=3,
        rewind=None,
        target_sparsity=FLAGS.sparsity,
    )
    model.fit(data.train.x, data.train.y, epochs=45, callbacks=[pruning], **fit)
    print(tf_lottery.sparsity(model))
    _, accuracy = model.evaluate(data.test.x, data.test.y, verbose=0)
    print(f"Keras test accuracy: {accuracy:.2%}\n")
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    for quantize, per_channel in (
        (None, True),
        ("float16", True),
        ("dynamic", True),
        ("int8", True),
        ("int8", False),
    ):
        suffix = "" if per_channel else "_per_tensor"
        path = os.path.join(FLAGS.out_dir, f"lenet_{quantize or 'float32'}{suffix}.tflite")
        report = tf_lottery.export_tflite(
            model,
            path,
            quantize=quantize,
            representative_data=data.train.x[:300],
            per_channel=per_channel,
        )
        logits = tf_lottery.run_tflite(path, data.test.x)
        print(report)
        print(f"LiteRT test accuracy: {(logits.argmax(1) == data.test.y).mean():.2%}\n")


if __name__ == "__main__":
    app.run(main)

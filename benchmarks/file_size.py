"""The size of a wrapped `.keras` file against the plain model's, for each `wrap(keep=...)`.

Models are saved uncompiled (no optimizer slots), freshly initialized; `.keras` is an
uncompressed zip, so the sizes are the raw bytes of the weights and the wrappers'
variables (uint8 masks, the saved copies `keep` names).

    python benchmarks/file_size.py [--resnet]
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tempfile  # noqa: E402

# First: tf_lottery loads Keras with TensorFlow's start-up logs kept out of the output.
import tf_lottery  # noqa: E402
import keras  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from train_overhead import MODELS  # noqa: E402
from train_overhead import keras3_model  # noqa: E402

flags.DEFINE_bool("resnet", False, "Also ResNet50(weights=None).")
FLAGS = flags.FLAGS


def _size(model, folder, name):
    path = os.path.join(folder, f"{name}.keras")
    model.save(path)
    return os.path.getsize(path)


def main(argv):
    del argv
    models = {
        name: (lambda build=build: keras3_model(build)) for name, (build, *_) in MODELS.items()
    }
    if FLAGS.resnet:
        models["ResNet50 (weights=None)"] = lambda: keras.applications.ResNet50(weights=None)
    print(f"keras {keras.__version__} on {keras.backend.backend()}; uncompiled models.\n")
    print("| model | plain MB | keep='masks' | keep='rewind' | keep='both' |")
    print("| --- | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as folder:
        for name, build in models.items():
            plain = build()
            base = _size(plain, folder, "plain")
            cells = []
            for keep in ("masks", "rewind", "both"):
                size = _size(tf_lottery.wrap(plain, keep=keep), folder, keep)
                cells.append(f"{size / 1e6:.2f} MB ({size / base:.2f}x)")
            print(
                f"| {name.split(' (')[0]} | {base / 1e6:.2f} | " + " | ".join(cells) + " |",
                flush=True,
            )


if __name__ == "__main__":
    app.run(main)

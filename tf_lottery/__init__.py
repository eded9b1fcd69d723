"""tf_lottery: lottery-ticket and magnitude pruning for Keras 3.

Wrap a model, prune it during `fit` with a callback, strip the wrappers and
export a sparse TFLite file:

```python
model = tf_lottery.wrap(model)
model.compile(...)
model.fit(x, y, epochs=20, callbacks=[
    tf_lottery.IterativePruning(tf_lottery.PruneFraction(0.2), every=4)])
print(tf_lottery.sparsity(model))
plain = tf_lottery.strip(model)
```
"""

# Two halves. Reading and running .tflite files (`run_tflite`, `inspect_tflite`
# and their reports) needs numpy and LiteRT only: imported here always. The rest
# needs Keras, and so a backend; it is imported here too, because Keras'
# deserializer imports only Keras' own packages: `keras.models.load_model` finds
# `tf_lottery>PruneWrapper` only once `import tf_lottery` has registered it. It is
# left to first use (`__getattr__`) in two cases: Keras cannot be imported (no
# backend installed, e.g. `pip install 'tf_lottery[litert]'`), or the process is
# the `tf-lottery` command (`tf_lottery_cli`), whose `--help`, `inspect` and
# `eval` must not pay seconds for TensorFlow. See docs/imports.md.
import importlib
import sys

from tf_lottery.export.capture import captured_output as _captured_output
from tf_lottery.export.capture import quiet_tensorflow_import as _quiet_tensorflow_import
from tf_lottery.export.litert import run_tflite
from tf_lottery.export.report import ExportReport
from tf_lottery.export.report import TFLiteReport
from tf_lottery.export.report import inspect_tflite

# The names that need Keras, by the module that defines them (packages: docs/architecture.md).
_KERAS_SIDE = {
    "callbacks": ["GradualPruning", "IterativePruning"],
    "criteria": ["Criterion", "NMSparsity", "PruneTarget", "StdThreshold"],
    "distillation": ["Distillation", "distillation_loss"],
    "experiments.history": [
        "LotteryHistory",
        "RoundResult",
        "RoundSummary",
        "Statistic",
        "plot_history",
    ],
    "experiments.instability": [
        "InterpolationResult",
        "instability_analysis",
        "interpolate",
        "plot_interpolation",
    ],
    "experiments.lottery": ["collect_history", "find_winning_ticket", "load_round"],
    "experiments.sensitivity": ["SensitivityReport", "sensitivity"],
    "export.latency": ["LatencyMeter", "LatencyTable", "litert_latency"],
    "export.tflite": ["ExportError", "export_tflite"],
    "fraction": ["PruneFraction", "RandomPrune"],
    "init_criteria": ["GraSP", "InitCriterion", "SNIP", "SynFlow"],
    "oneshot": ["OneShotCriterion", "SparseGPT", "Wanda"],
    "pruning": ["apply_masks", "erk_targets", "prune", "reset_optimizer", "rewind"],
    "registry": ["LayerKind", "register_layer"],
    "report": ["LayerSparsity", "SparsityReport", "sparsity"],
    "saving": ["load_model"],
    "schedules": ["ConstantSparsity", "EveryEpochs", "PolynomialDecay", "Schedule"],
    "structured.shrink": ["ShrinkReport", "shrink", "shrink_report"],
    "structured.target": ["Target", "TargetReport", "target_report"],
    "structured.unit_criterion": ["UnitCriterion"],
    "structured.units": ["BatchNormScale", "UnitActivation", "UnitNorm", "UnitStdThreshold"],
    "transforms": ["strip", "wrap"],
    "wrapper": ["PruneWrapper", "RewindWrapper", "find_rewind_wrappers", "find_wrappers"],
}
_KERAS_NAMES = {name for names in _KERAS_SIDE.values() for name in names}


def _import_keras():
    """Imports Keras, and so its backend, without their start-up logs."""
    # Whoever imports TensorFlow later (Keras itself, or set_random_seed under
    # JAX and PyTorch), its start-up logs are captured too.
    _quiet_tensorflow_import()
    with _captured_output():
        # Devices are left uninitialized: jax.distributed.initialize() and
        # tf.config's device settings must come before that.
        importlib.import_module("keras")


def _load_keras_side():
    """Imports the Keras half and binds its names in this package."""
    with _captured_output():
        modules = {name: importlib.import_module(f"tf_lottery.{name}") for name in _KERAS_SIDE}
    # Bound after every import, so that no submodule's import rebinds a name
    # (`tf_lottery.shrink` is the function; its module is `structured.shrink`).
    for module, names in _KERAS_SIDE.items():
        for name in names:
            globals()[name] = getattr(modules[module], name)


def __getattr__(name):
    if name not in _KERAS_NAMES:
        raise AttributeError(f"module 'tf_lottery' has no attribute {name!r}")
    try:
        _import_keras()
    except ImportError as error:
        raise ImportError(
            f"tf_lottery.{name} needs Keras with a backend, and Keras cannot be imported "
            f"here ({type(error).__name__}: {error}). Install a backend: pip install "
            "'tf_lottery[tensorflow]' (or [jax] or [torch], with KERAS_BACKEND naming it). "
            "Reading and running .tflite files (run_tflite, inspect_tflite) needs only "
            "'tf_lottery[litert]'."
        ) from error
    _load_keras_side()
    return globals()[name]


def __dir__():
    return sorted({*globals(), *_KERAS_NAMES})


if "tf_lottery_cli" not in sys.modules:
    try:
        _import_keras()
    except ImportError:
        pass  # no backend: the Keras half's names raise a clear ImportError when used
    else:
        _load_keras_side()

__version__ = "0.1.0"

__all__ = [
    "BatchNormScale",
    "ConstantSparsity",
    "Criterion",
    "Distillation",
    "EveryEpochs",
    "ExportError",
    "ExportReport",
    "GradualPruning",
    "GraSP",
    "InitCriterion",
    "InterpolationResult",
    "IterativePruning",
    "LatencyMeter",
    "LatencyTable",
    "LayerKind",
    "LayerSparsity",
    "LotteryHistory",
    "NMSparsity",
    "OneShotCriterion",
    "PolynomialDecay",
    "PruneFraction",
    "PruneTarget",
    "PruneWrapper",
    "RandomPrune",
    "RewindWrapper",
    "RoundResult",
    "Schedule",
    "RoundSummary",
    "SNIP",
    "SparseGPT",
    "SensitivityReport",
    "ShrinkReport",
    "SparsityReport",
    "Statistic",
    "StdThreshold",
    "SynFlow",
    "TFLiteReport",
    "Target",
    "TargetReport",
    "UnitActivation",
    "UnitCriterion",
    "UnitNorm",
    "UnitStdThreshold",
    "Wanda",
    "apply_masks",
    "erk_targets",
    "collect_history",
    "distillation_loss",
    "export_tflite",
    "find_rewind_wrappers",
    "find_winning_ticket",
    "find_wrappers",
    "inspect_tflite",
    "instability_analysis",
    "interpolate",
    "litert_latency",
    "load_model",
    "load_round",
    "plot_history",
    "plot_interpolation",
    "prune",
    "register_layer",
    "reset_optimizer",
    "rewind",
    "run_tflite",
    "sensitivity",
    "shrink",
    "shrink_report",
    "sparsity",
    "strip",
    "target_report",
    "wrap",
]

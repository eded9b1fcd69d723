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

# Importing Keras loads its backend; TensorFlow's logs that C++ prints at load
# time ignore TF_CPP_MIN_LOG_LEVEL, so they are captured here and dropped (import
# tf_lottery before keras to keep them out of your program's output). The
# package imports Keras eagerly so that its classes are registered for
# `keras.models.load_model` as soon as `tf_lottery` is imported.
from tf_lottery.capture import captured_output as _captured_output

with _captured_output():
    # Devices are left uninitialized: jax.distributed.initialize() and
    # tf.config's device settings must come before that.
    import keras  # noqa: F401

from tf_lottery.callbacks import GradualPruning  # noqa: E402
from tf_lottery.callbacks import IterativePruning  # noqa: E402
from tf_lottery.criteria import Criterion
from tf_lottery.criteria import NMSparsity
from tf_lottery.criteria import PruneFraction
from tf_lottery.criteria import PruneTarget
from tf_lottery.criteria import RandomPrune
from tf_lottery.criteria import StdThreshold
from tf_lottery.history import LotteryHistory
from tf_lottery.history import RoundResult
from tf_lottery.history import RoundSummary
from tf_lottery.history import Statistic
from tf_lottery.history import plot_history
from tf_lottery.init_criteria import GraSP
from tf_lottery.init_criteria import InitCriterion
from tf_lottery.init_criteria import SNIP
from tf_lottery.init_criteria import SynFlow
from tf_lottery.instability import InterpolationResult
from tf_lottery.instability import instability_analysis
from tf_lottery.instability import interpolate
from tf_lottery.instability import plot_interpolation
from tf_lottery.lottery import collect_history
from tf_lottery.lottery import find_winning_ticket
from tf_lottery.lottery import load_round
from tf_lottery.oneshot import OneShotCriterion
from tf_lottery.oneshot import SparseGPT
from tf_lottery.oneshot import Wanda
from tf_lottery.pruning import apply_masks
from tf_lottery.pruning import erk_targets
from tf_lottery.pruning import prune
from tf_lottery.pruning import reset_optimizer
from tf_lottery.pruning import rewind
from tf_lottery.report import LayerSparsity
from tf_lottery.report import SparsityReport
from tf_lottery.report import sparsity
from tf_lottery.saving import load_model
from tf_lottery.schedules import ConstantSparsity
from tf_lottery.schedules import EveryEpochs
from tf_lottery.schedules import PolynomialDecay
from tf_lottery.schedules import Schedule
from tf_lottery.shrink import ShrinkReport
from tf_lottery.shrink import shrink
from tf_lottery.shrink import shrink_report
from tf_lottery.structured import BatchNormScale
from tf_lottery.structured import UnitCriterion
from tf_lottery.structured import UnitNorm
from tf_lottery.structured import UnitStdThreshold
from tf_lottery.sensitivity import SensitivityReport
from tf_lottery.sensitivity import sensitivity
from tf_lottery.tflite import ExportError
from tf_lottery.tflite import ExportReport
from tf_lottery.tflite import TFLiteReport
from tf_lottery.tflite import export_tflite
from tf_lottery.tflite import inspect_tflite
from tf_lottery.tflite import run_tflite
from tf_lottery.transforms import strip
from tf_lottery.transforms import wrap
from tf_lottery.wrapper import PruneWrapper
from tf_lottery.wrapper import RewindWrapper
from tf_lottery.wrapper import find_rewind_wrappers
from tf_lottery.wrapper import find_wrappers

__version__ = "0.1.0"

__all__ = [
    "BatchNormScale",
    "ConstantSparsity",
    "Criterion",
    "EveryEpochs",
    "ExportError",
    "ExportReport",
    "GradualPruning",
    "GraSP",
    "InitCriterion",
    "InterpolationResult",
    "IterativePruning",
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
    "UnitCriterion",
    "UnitNorm",
    "UnitStdThreshold",
    "Wanda",
    "apply_masks",
    "erk_targets",
    "collect_history",
    "export_tflite",
    "find_rewind_wrappers",
    "find_winning_ticket",
    "find_wrappers",
    "inspect_tflite",
    "instability_analysis",
    "interpolate",
    "load_model",
    "load_round",
    "plot_history",
    "plot_interpolation",
    "prune",
    "reset_optimizer",
    "rewind",
    "run_tflite",
    "sensitivity",
    "shrink",
    "shrink_report",
    "sparsity",
    "strip",
    "wrap",
]

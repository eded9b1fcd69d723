"""`PruneWrapper`: a layer wrapper that keeps a mask and the initial weights.

Also holds the two model-level transforms built on it: `wrap` (add wrappers to a
Sequential or Functional model) and `strip` (remove them, keeping weight * mask).
"""

import contextlib
import threading
import warnings
from typing import NamedTuple

import keras
from keras import ops

from tf_lottery import keras_private
from tf_lottery.keras_private import get_stateless_scope

# Names of the variables that are pruned, per layer class. Biases and
# normalization parameters are never pruned.
_PRUNABLE_NAMES = (
    (keras.layers.Dense, ("kernel",)),
    (keras.layers.EinsumDense, ("kernel",)),
    (keras.layers.Conv1D, ("kernel",)),
    (keras.layers.Conv2D, ("kernel",)),
    (keras.layers.Conv3D, ("kernel",)),
    (keras.layers.Conv1DTranspose, ("kernel",)),
    (keras.layers.Conv2DTranspose, ("kernel",)),
    (keras.layers.Conv3DTranspose, ("kernel",)),
    (keras.layers.DepthwiseConv1D, ("kernel",)),
    (keras.layers.DepthwiseConv2D, ("kernel",)),
    (keras.layers.SeparableConv1D, ("depthwise_kernel", "pointwise_kernel")),
    (keras.layers.SeparableConv2D, ("depthwise_kernel", "pointwise_kernel")),
    (keras.layers.Embedding, ("embeddings",)),
    # Sub-layers' kernels: the query, key, value and output projections.
    (keras.layers.MultiHeadAttention, ("kernel",)),
    (keras.layers.SimpleRNN, ("kernel", "recurrent_kernel")),
    (keras.layers.LSTM, ("kernel", "recurrent_kernel")),
    (keras.layers.GRU, ("kernel", "recurrent_kernel")),
)


def assign_copy(variable, value):
    """`variable.assign(value)` with a copy of `value`.

    On JAX a variable holds its array by reference, and the compiled train step
    donates (frees) every state buffer it is given: two variables holding the same
    buffer, such as a weight and its saved θ0, make the step fail. A copy keeps
    each variable's buffer its own.
    """
    variable.assign(ops.copy(value))


def is_prunable(layer):
    """Returns whether `layer` has weights that tf_lottery knows how to prune.

    A layer is prunable if it is one of the supported Keras layers (Dense,
    EinsumDense, the convolutions, Embedding, MultiHeadAttention, SimpleRNN, LSTM,
    GRU) or defines `get_prunable_weights()`.
    """
    if isinstance(layer, PruneWrapper):
        return False
    if hasattr(layer, "get_prunable_weights"):
        return True
    return any(isinstance(layer, cls) for cls, _ in _PRUNABLE_NAMES)


def prunable_weights(layer):
    """Returns the list of variables of a built `layer` that are pruned."""
    if hasattr(layer, "get_prunable_weights"):
        return list(layer.get_prunable_weights())
    for cls, names in _PRUNABLE_NAMES:
        if isinstance(layer, cls):
            # All weights, not trainable_weights: a frozen layer's kernel is still
            # a prunable weight, counted by `sparsity`.
            return [w for w in layer.weights if w.name in names]
    return []


def _weight_key(layer, variable):
    """A short name for `variable` inside `layer`: "kernel", "query/kernel", ..."""
    prefix = layer.path + "/"
    if variable.path.startswith(prefix):
        return variable.path[len(prefix) :]
    return variable.name


class MaskedWeight(NamedTuple):
    """A pruned weight of a wrapped layer and the variables kept beside it."""

    name: str
    variable: keras.Variable
    mask: keras.Variable
    threshold: keras.Variable


class SavedWeight(NamedTuple):
    """A trainable weight of a wrapped layer and its saved copies."""

    name: str
    variable: keras.Variable
    initial: keras.Variable
    rewind_point: keras.Variable
    mask: keras.Variable | None


class MaskConstraint(keras.constraints.Constraint):
    """Multiplies a weight by its mask after every optimizer step.

    Keras optimizers apply `variable.constraint` right after each update, inside
    the compiled train step, on every backend. Masking there, rather than in the
    forward pass, costs one multiply per step and keeps the weight variable itself
    sparse, so every checkpoint is sparse too. A constraint the layer already had
    runs first.

    How the mask reaches the step: on TensorFlow and PyTorch variables are
    stateful, and the constraint reads the mask variable itself. On JAX the train
    step is a pure function of the model's state, and the optimizer's update sees
    only the trainable and optimizer variables, not the mask (a non-trainable
    variable). So the wrapper's forward pass, which runs in the same compiled step
    with the whole state, hands the step's mask value to this constraint
    (`step_mask`), and the update uses it. A changed mask thus reaches the next
    step as state, with no retrace.

    Args:
        mask: The 0/1 mask variable.
        constraint: The weight's previous constraint, or `None`.
    """

    def __init__(self, mask, constraint=None):
        self.mask = mask
        self.constraint = constraint
        self.step_mask = None

    def remember_step_mask(self):
        """Keeps the mask value of a stateless step for the update that follows.

        Called by the wrapper's forward pass. Only a stateless step that carries
        the mask in its state (JAX's train step) leaves a value here.
        """
        scope = get_stateless_scope()
        if scope is not None and scope.get_current_value(self.mask) is not None:
            self.step_mask = self.mask.value

    def __call__(self, weight):
        if self.constraint is not None:
            weight = self.constraint(weight)
        scope = get_stateless_scope()
        if (
            scope is not None
            and scope.get_current_value(self.mask) is None
            and self.step_mask is not None
        ):
            mask = self.step_mask
        else:
            mask = self.mask.value
        return ops.multiply(weight, ops.cast(mask, weight.dtype))

    def get_config(self):
        # Masks are variables of the wrapper and are saved with it; the wrapper
        # installs this constraint again when it is built.
        return {}


class _CopyOf(keras.initializers.Initializer):
    """Initializes a variable with a copy of another variable's value.

    θ0 is initialized this way rather than copied after `build`: a subclassed
    model builds its layers inside a symbolic call, where Keras defers every
    variable's initialization to the end of the call (in creation order, so the
    weight gets its value before its copy does) and an `assign` would be lost.
    """

    def __init__(self, variable):
        self.variable = variable

    def __call__(self, shape, dtype=None):
        return ops.copy(ops.cast(self.variable.value, dtype or self.variable.dtype))


_unwrapping = threading.local()


@contextlib.contextmanager
def _constructing_unwrapped():
    """Within this scope `PruneWrapper(layer)` returns `layer` itself.

    `strip` rebuilds a subclassed model from its config in this scope, so the
    model's own `__init__` builds it without wrappers.
    """
    _unwrapping.active = True
    try:
        yield
    finally:
        _unwrapping.active = False


@keras.saving.register_keras_serializable(package="tf_lottery")
class PruneWrapper(keras.layers.Wrapper):
    """Wraps a layer so that its weights can be pruned and rewound.

    For each prunable weight of the wrapped layer (a Dense kernel, a convolution
    kernel, embeddings, ...) the wrapper keeps a non-trainable 0/1 `mask` and the
    threshold of the last pruning round. For every trainable weight (biases
    included, as in Frankle & Carbin) it keeps a copy of the initial weights (θ0),
    taken when the wrapper is built or by `save_initial_weights()`, and a slot for
    a later rewind point. Pruned weights are exactly zero: the mask is multiplied
    into the weight whenever a pruning round runs and after every optimizer step,
    so a weight once pruned stays zero. Everything lives in Keras variables, so
    `model.save()` keeps it.

    Masks are changed by `tf_lottery.prune` or the `IterativePruning` callback,
    not by the wrapper itself.

    Args:
        layer: The `keras.layers.Layer` to wrap. It must have prunable weights:
            Dense, EinsumDense, Conv1D/2D/3D and their Transpose versions,
            DepthwiseConv1D/2D, SeparableConv1D/2D, Embedding, MultiHeadAttention,
            SimpleRNN, LSTM, GRU, or any layer that defines
            `get_prunable_weights()` returning a list of its variables.
        **kwargs: Base layer keyword arguments, such as `name`. The name defaults
            to `"prune_" + layer.name`.

    Example:

    ```python
    class MLP(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.hidden = tf_lottery.PruneWrapper(keras.layers.Dense(300, "relu"))
            self.out = tf_lottery.PruneWrapper(keras.layers.Dense(10))

        def call(self, x):
            return self.out(self.hidden(x))
    ```
    """

    def __new__(cls, layer=None, *args, **kwargs):
        if getattr(_unwrapping, "active", False):
            return layer
        return super().__new__(cls, layer, *args, **kwargs)

    def __init__(self, layer, **kwargs):
        if not isinstance(layer, keras.layers.Layer):
            raise ValueError(
                "Expected a keras.layers.Layer to wrap. "
                f"Received: layer={layer!r} of type {type(layer).__name__}"
            )
        if isinstance(layer, PruneWrapper):
            raise ValueError(
                f"Layer '{layer.layer.name}' is already wrapped in a PruneWrapper; "
                f"pass the wrapper itself instead of wrapping it again. Received: layer={layer}"
            )
        if not is_prunable(layer) or (layer.built and not prunable_weights(layer)):
            raise ValueError(
                f"Layer '{layer.name}' of type {type(layer).__name__} has no prunable "
                "weights. Wrap Dense, EinsumDense, convolution, Embedding, "
                "MultiHeadAttention or RNN layers, or define get_prunable_weights() "
                f"on your layer. Received: layer={layer}"
            )
        kwargs.setdefault("name", f"prune_{layer.name}")
        super().__init__(layer, **kwargs)
        self.supports_masking = getattr(layer, "supports_masking", False)
        self._masked = []
        self._saved = []
        self._constraints = []

    def build(self, input_shape=None):
        if not self.layer.built:
            try:
                self.layer.build(input_shape)
            except TypeError as error:
                raise ValueError(
                    f"PruneWrapper could not build layer '{self.layer.name}' from one input "
                    f"shape ({error}). Build the layer before wrapping it, e.g. "
                    "layer.build(query_shape, value_shape) for MultiHeadAttention."
                ) from error
            self.layer.built = True
        weights = prunable_weights(self.layer)
        if not weights:
            raise ValueError(
                f"Layer '{self.layer.name}' has no prunable weights once built; "
                "its get_prunable_weights() returned an empty list."
            )
        masks = {}
        for variable in weights:
            key = _weight_key(self.layer, variable)
            slug = key.replace("/", "_")
            mask = self.add_weight(
                name=f"{slug}_mask",
                shape=variable.shape,
                dtype=variable.dtype,
                initializer="ones",
                trainable=False,
            )
            threshold = self.add_weight(
                name=f"{slug}_threshold",
                shape=(),
                dtype="float32",
                initializer=keras.initializers.Constant(float("nan")),
                trainable=False,
            )
            constraint = MaskConstraint(mask, variable.constraint)
            variable.constraint = constraint
            self._constraints.append(constraint)
            masks[id(variable)] = mask
            self._masked.append(MaskedWeight(key, variable, mask, threshold))
        for variable in self.layer.trainable_weights:
            key = _weight_key(self.layer, variable)
            slug = key.replace("/", "_")
            copies = [
                self.add_weight(
                    name=f"{slug}_{slot}",
                    shape=variable.shape,
                    dtype=variable.dtype,
                    initializer=initializer,
                    trainable=False,
                )
                for slot, initializer in (("initial", _CopyOf(variable)), ("rewind_point", "zeros"))
            ]
            self._saved.append(SavedWeight(key, variable, *copies, masks.get(id(variable))))
        self.pruning_round = self.add_weight(
            name="pruning_round", shape=(), dtype="int32", initializer="zeros", trainable=False
        )
        self.rewind_epoch = self.add_weight(
            name="rewind_epoch",
            shape=(),
            dtype="int32",
            initializer=keras.initializers.Constant(-1),
            trainable=False,
        )
        self.built = True

    def call(self, inputs, *args, **kwargs):
        for constraint in self._constraints:
            constraint.remember_step_mask()
        return self.layer(inputs, *args, **kwargs)

    def compute_mask(self, inputs, mask=None):
        return self.layer.compute_mask(inputs, mask)

    def get_build_config(self):
        return {"layer": self.layer.get_build_config()}

    def build_from_config(self, config):
        layer_config = (config or {}).get("layer")
        if layer_config and not self.layer.built:
            self.layer.build_from_config(layer_config)
        self.build()

    @property
    def masked_weights(self):
        """The pruned weights, each a `MaskedWeight(name, variable, mask, threshold)`."""
        return list(self._masked)

    @property
    def saved_weights(self):
        """Every trainable weight with its `initial` and `rewind_point` copies."""
        return list(self._saved)

    @property
    def masks(self):
        """A dict from weight name (e.g. `"kernel"`) to its mask variable."""
        return {m.name: m.mask for m in self._masked}

    @property
    def initial_weights(self):
        """A dict from weight name to its initial-weights (θ0) variable."""
        return {s.name: s.initial for s in self._saved}

    def save_initial_weights(self):
        """Copies the layer's current weights into the initial weights (θ0)."""
        for saved in self._saved:
            assign_copy(saved.initial, saved.variable.value)

    def save_rewind_point(self, epoch):
        """Copies the layer's current weights into the rewind point.

        Args:
            epoch: The number of epochs trained so far; recorded with the copy.
        """
        for saved in self._saved:
            assign_copy(saved.rewind_point, saved.variable.value)
        self.rewind_epoch.assign(epoch)

    def rewind(self, to="initial"):
        """Resets the weights to a saved copy, keeping pruned weights at zero.

        Args:
            to: `"initial"` for θ0 or `"rewind_point"` for the copy saved by
                `save_rewind_point`. Defaults to `"initial"`.
        """
        if to not in ("initial", "rewind_point"):
            raise ValueError(f"Expected to='initial' or 'rewind_point'. Received: to={to!r}")
        if to == "rewind_point" and int(self.rewind_epoch.numpy()) < 0:
            raise ValueError(
                f"Layer '{self.layer.name}' has no rewind point saved yet; call "
                "save_rewind_point(epoch) first, or rewind to='initial'."
            )
        for saved in self._saved:
            value = getattr(saved, to).value
            if saved.mask is not None:
                value = ops.multiply(value, saved.mask.value)
            assign_copy(saved.variable, value)

    def apply_masks(self):
        """Sets the pruned weights to zero (weight = weight * mask)."""
        for masked in self._masked:
            masked.variable.assign(ops.multiply(masked.variable.value, masked.mask.value))


def find_wrappers(model):
    """Returns the `PruneWrapper` layers of `model`, each once, in model order.

    Works for Sequential, Functional and subclassed models, nested ones
    included. A layer shared between two calls appears once.
    """
    return [
        layer for layer in keras_private.flatten_layers(model) if isinstance(layer, PruneWrapper)
    ]


def _weight_units(model):
    """The layers that carry `model`'s weights, in tracking order.

    A wrapper, a prunable layer and a layer with variables of its own each count
    as one unit; other containers are walked into. The same model with and
    without wrappers gives the same sequence, which is how `wrap` and `strip`
    carry weights from a model to its copy.
    """
    units, seen = [], set()

    def visit(layer):
        for sub in keras_private.direct_sublayers(layer):
            if id(sub) in seen:
                continue
            seen.add(id(sub))
            own = keras_private.own_variables(sub)
            if (
                isinstance(sub, PruneWrapper)
                or is_prunable(sub)
                or own
                or not keras_private.direct_sublayers(sub)
            ):
                units.append(sub)
            else:
                visit(sub)

    visit(model)
    return units


def _copy_weights(source, target, masked):
    """Assigns `source`'s layer weights to `target`'s, multiplying in masks if `masked`."""
    sources, targets = _weight_units(source), _weight_units(target)
    if len(sources) != len(targets):
        raise ValueError(
            f"Could not match the layers of model '{source.name}' with its rebuilt copy "
            f"({len(sources)} vs {len(targets)} layers with weights). The model may create "
            "layers in a way that depends on more than its config."
        )
    for src, dst in zip(sources, targets):
        src_layer = src.layer if isinstance(src, PruneWrapper) else src
        dst_layer = dst.layer if isinstance(dst, PruneWrapper) else dst
        values = [v.value for v in src_layer.weights]
        if masked and isinstance(src, PruneWrapper):
            masks = {id(m.variable): m.mask for m in src.masked_weights}
            values = [
                ops.multiply(value, ops.cast(masks[id(v)].value, value.dtype))
                if id(v) in masks
                else value
                for v, value in zip(src_layer.weights, values)
            ]
        if type(src_layer) is not type(dst_layer) or [
            tuple(v.shape) for v in src_layer.weights
        ] != [tuple(v.shape) for v in dst_layer.weights]:
            raise ValueError(
                f"Could not match layer '{src_layer.name}' of model '{source.name}' with "
                f"'{dst_layer.name}' of its rebuilt copy. The model may create layers in "
                "an order that depends on more than its config."
            )
        for variable, value in zip(dst_layer.weights, values):
            assign_copy(variable, value)


def _fresh_copy(layer):
    """A new layer like `layer`, or `layer` itself when it holds no variables.

    A layer without variables (Lambda, Flatten, activations) can serve the copy
    as it is, and rebuilding a Lambda from its config fails in Keras' safe mode.
    """
    if isinstance(layer, keras.layers.Layer) and not layer.variables:
        return layer
    return layer.__class__.from_config(layer.get_config())


def wrap(model, *, exclude=()):
    """Returns a copy of `model` with every prunable layer in a `PruneWrapper`.

    The copy has the same architecture and the same weights: a pretrained model
    can be pruned, and its current weights become the initial weights (θ0) that
    pruning rewinds to. The original model is not changed. Nested Sequential and
    Functional models are wrapped too, and a layer shared by two calls gets one
    wrapper (one mask). For a subclassed model, write `PruneWrapper(layer)` in its
    `__init__` instead.

    Args:
        model: A built Sequential or Functional Keras model.
        exclude: Names of prunable layers to leave unwrapped (for example the first
            convolution, which Han et al. found most sensitive). Defaults to `()`.

    Returns:
        A new, uncompiled Keras model.

    Example:

    ```python
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(300, "relu"),
                              keras.layers.Dense(10)])
    pruned = tf_lottery.wrap(model, exclude=["dense_1"])
    ```
    """
    if not keras_private.is_graph_model(model):
        raise ValueError(
            "tf_lottery.wrap() expects a Sequential or Functional model. Received: "
            f"model of type {type(model).__name__}. In a subclassed model, write "
            "tf_lottery.PruneWrapper(layer) in __init__ instead."
        )
    if isinstance(exclude, str):
        exclude = (exclude,)
    exclude = set(exclude)
    layers = keras_private.flatten_layers(model)
    if any(isinstance(layer, PruneWrapper) for layer in layers):
        raise ValueError(
            f"Model '{model.name}' already contains PruneWrapper layers: wrap() was "
            "called on it before. Use the model as it is, or strip() it first."
        )
    candidates = [layer for layer in layers if is_prunable(layer) and prunable_weights(layer)]
    frozen = {layer.name for layer in candidates if not layer.trainable}
    prunable = {layer.name for layer in candidates} - frozen
    unknown = sorted(exclude - prunable - frozen)
    if unknown:
        raise ValueError(
            f"exclude names layers that are not prunable layers of model '{model.name}': "
            f"{unknown}. Prunable layers: {sorted(prunable | frozen)}. "
            f"Received: exclude={sorted(exclude)}"
        )
    if not prunable - exclude:
        if prunable:
            reason = f"all its prunable layers are excluded. Received: exclude={sorted(exclude)}"
        elif frozen:
            reason = (
                f"its prunable layers {sorted(frozen)} are frozen (trainable=False), and "
                "wrap() leaves frozen layers as they are. Set layer.trainable = True on "
                "the layers to prune before calling wrap()."
            )
        else:
            reason = "it has no Dense, convolution, Embedding, attention or RNN layer."
        raise ValueError(f"Model '{model.name}' has nothing to prune: {reason}")
    if frozen - exclude:
        warnings.warn(
            f"wrap() leaves the frozen (trainable=False) layers {sorted(frozen - exclude)} "
            "unwrapped: they are not pruned, and count as dense in tf_lottery.sparsity(). "
            "To prune one, set its trainable = True before wrap(); to keep a wrapped layer "
            "fixed while others prune, use IterativePruning(frozen=[...]).",
            stacklevel=2,
        )

    def clone_function(layer):
        copy = _fresh_copy(layer)
        if layer.name in prunable - exclude:
            # Built like the original, so layers whose build takes more than one
            # shape (MultiHeadAttention) are ready before the wrapper builds.
            copy.build_from_config(layer.get_build_config())
            return PruneWrapper(copy)
        return copy

    clone = keras.models.clone_model(model, clone_function=clone_function, recursive=True)
    _copy_weights(model, clone, masked=False)
    for wrapper in find_wrappers(clone):
        wrapper.save_initial_weights()
    return clone


def strip(model):
    """Returns a plain Keras model without wrappers, with weights = weight * mask.

    The result has no tf_lottery objects in it: it saves, loads and converts like
    any Keras model, and gives the same predictions as `model`. The original
    model is not changed. A subclassed model is rebuilt from its config (it needs
    a working `get_config()`), with each `PruneWrapper(layer)` in its `__init__`
    replaced by the layer itself.

    Args:
        model: A Keras model containing `PruneWrapper` layers.

    Returns:
        A new, uncompiled Keras model.

    Example:

    ```python
    plain = tf_lottery.strip(pruned)
    plain.save("pruned_plain.keras")
    ```
    """
    if not find_wrappers(model):
        raise ValueError(
            f"Model '{model.name}' has no PruneWrapper layers, so there is nothing to "
            "strip. Received: a model that was never wrapped."
        )
    if keras_private.is_graph_model(model):
        clone = keras.models.clone_model(
            model,
            clone_function=lambda layer: _fresh_copy(
                layer.layer if isinstance(layer, PruneWrapper) else layer
            ),
            recursive=True,
        )
    else:
        try:
            config = model.get_config()
            with _constructing_unwrapped():
                clone = model.__class__.from_config(config)
        except (NotImplementedError, TypeError) as error:
            raise ValueError(
                f"strip() rebuilds subclassed model '{model.name}' from its config, but "
                f"{type(model).__name__}.get_config()/from_config() failed: {error}. "
                "Give the model a get_config() that returns its __init__ arguments."
            ) from error
        clone.build_from_config(model.get_build_config())
    _copy_weights(model, clone, masked=True)
    return clone

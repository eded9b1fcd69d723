"""The wrappers: `RewindWrapper` keeps saved copies, `PruneWrapper` adds masks.

Every layer with weights that `wrap` touches gets a wrapper: a prunable layer a
`PruneWrapper` (masks, thresholds, and the saved copies), any other layer with
weights (BatchNormalization, an excluded layer) a `RewindWrapper` (the saved
copies only), so that rewinding puts the whole model back, BN statistics
included. Everything lives in Keras variables, so `model.save()` keeps it.
"""

import contextlib
import inspect
import threading

import keras
from keras import ops

from tf_lottery import keras_private
from tf_lottery.masking import MASK_DTYPE
from tf_lottery.masking import NO_THRESHOLD
from tf_lottery.masking import IN_PLACE
from tf_lottery.masking import CopyOf
from tf_lottery.masking import MaskConstraint
from tf_lottery.masking import MaskedWeight
from tf_lottery.masking import SavedWeight
from tf_lottery.masking import assign_copy
from tf_lottery.masking import remember_step_masks
from tf_lottery.registry import has_unit_axis
from tf_lottery.registry import is_prunable
from tf_lottery.registry import prunable_weights
from tf_lottery.validators import check_choice

REWIND_TARGETS = ("initial", "rewind_point")
# Whether a wrapper's variables that no train step reads stay out of its
# `variables`: on JAX, whose train step carries its whole state (RewindWrapper.variables).
OUTSIDE_STEP = keras.backend.backend() == "jax"

# What a wrapper keeps to rewind to (`wrap(keep=...)`): "rewind", one copy of
# every weight, θ0 until a rewind point replaces it; "both", θ0 and a rewind
# point; "masks", no copy (flows that never rewind: GradualPruning, one-shot
# `prune`, compat.tfmot).
KEEP = ("rewind", "both", "masks")

# How a wrapper writes its variables. 1 (tf_lottery 0.1, no "layout_version" in
# the config): every variable it tracks, the wrapped layer's weights included,
# which the wrapped layer also writes. 2: its own variables only (masks,
# thresholds, saved copies, counters), so each weight is written once; masks in
# the weight's float dtype, θ0 and a rewind point for every weight. 3: as 2, with
# masks as uint8 and the saved copies that `keep` (in the config) names.
LAYOUT_VERSION = 3


def _weight_key(layer, variable):
    """A short name for `variable` inside `layer`: "kernel", "query/kernel", ..."""
    prefix = layer.path + "/"
    if variable.path.startswith(prefix):
        return variable.path[len(prefix) :]
    return variable.name


_unwrapping = threading.local()


@contextlib.contextmanager
def constructing_unwrapped():
    """Within this scope `PruneWrapper(layer)` and `RewindWrapper(layer)` return `layer`.

    `strip` rebuilds a subclassed model from its config in this scope, so the
    model's own `__init__` builds it without wrappers.
    """
    _unwrapping.active = True
    try:
        yield
    finally:
        _unwrapping.active = False


def _slug(key):
    return key.replace("/", "_")


@keras.saving.register_keras_serializable(package="tf_lottery")
class RewindWrapper(keras.layers.Wrapper):
    """Wraps a layer so that all its weights can be rewound.

    Keeps, for every weight of the wrapped layer, trainable or not (a
    BatchNormalization's γ, β and moving statistics), a copy of its initial value
    θ0, taken when the wrapper is built or by `save_initial_weights()`, which a
    later rewind point replaces (`keep` chooses what is kept). `wrap` puts one around every layer with
    weights that it does not prune, so that `tf_lottery.rewind` and
    `IterativePruning` reset the whole model, as Frankle & Carbin and open_lth
    do. `PruneWrapper` is a `RewindWrapper` that also prunes.

    Args:
        layer: The `keras.layers.Layer` to wrap.
        keep: What the wrapper keeps to rewind to: `"rewind"`, one copy of each
            weight (θ0, replaced by the rewind point once one is saved);
            `"both"`, θ0 and a rewind point; `"masks"`, no copy, for flows that
            never rewind (`GradualPruning`, one-shot `prune`). See
            `tf_lottery.wrap`. Defaults to `"rewind"`.
        **kwargs: Base layer keyword arguments, such as `name`. The name defaults
            to `"rewind_" + layer.name`.

    Example:

    ```python
    class CNN(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.conv = tf_lottery.PruneWrapper(keras.layers.Conv2D(8, 3))
            self.bn = tf_lottery.RewindWrapper(keras.layers.BatchNormalization())
            ...
    ```
    """

    _default_prefix = "rewind"

    def __new__(cls, layer=None, *args, **kwargs):
        # See constructing_unwrapped(): how strip rebuilds a subclassed model.
        if getattr(_unwrapping, "active", False):
            return layer
        return super().__new__(cls, layer, *args, **kwargs)

    def __init__(self, layer, *, keep="rewind", **kwargs):
        check_choice(keep, "keep", KEEP, meaning="what the wrapper keeps to rewind to")
        if not isinstance(layer, keras.layers.Layer):
            raise ValueError(
                "Expected a keras.layers.Layer to wrap. "
                f"Received: layer={layer!r} of type {type(layer).__name__}"
            )
        if isinstance(layer, RewindWrapper):
            raise ValueError(
                f"Layer '{layer.layer.name}' is already wrapped in a {type(layer).__name__}; "
                f"pass the wrapper itself instead of wrapping it again. Received: layer={layer}"
            )
        kwargs.setdefault("name", f"{self._default_prefix}_{layer.name}")
        # The layout of the file being loaded; a new wrapper writes LAYOUT_VERSION.
        self._loaded_layout = kwargs.pop("layout_version", LAYOUT_VERSION)
        # Files before layout 3 hold float masks, θ0 and a rewind point.
        self.keep = keep if self._loaded_layout >= 3 else "both"
        self._mask_dtype = MASK_DTYPE if self._loaded_layout >= 3 else None
        super().__init__(layer, **kwargs)
        self.supports_masking = getattr(layer, "supports_masking", False)
        self._saved = []
        self._constraints = []
        self._mask_pairs = []
        self.unit_mask = None
        self._direct = None  # (the layer's dtype policy, the choice): see _direct_call

    def _build_layer(self, input_shape):
        if self.layer.built:
            return
        try:
            self.layer.build(input_shape)
        except TypeError as error:
            raise ValueError(
                f"{type(self).__name__} could not build layer '{self.layer.name}' from one "
                f"input shape ({error}). Build the layer before wrapping it, e.g. "
                "layer.build(query_shape, value_shape) for MultiHeadAttention."
            ) from error
        self.layer.built = True

    @property
    def target_name(self):
        """The name that criteria, reports and callbacks know this layer by.

        The wrapped layer's name; for a wrapper attached in place (see
        `tf_lottery.wrap(in_place=True)`), its path, since names repeat across
        a transformer's blocks.
        """
        return self.layer.name

    def _rewound_variables(self):
        """The variables that get saved copies: all of the wrapped layer's."""
        return self.layer.weights

    def _add_saved_copies(self, masks):
        """The copies `keep` asks for, of every weight; `masks` by variable id."""
        if self.keep == "masks":
            return
        for variable in self._rewound_variables():
            key = _weight_key(self.layer, variable)
            slots = (("initial", CopyOf(variable)), ("rewind_point", "zeros"))
            if self.keep == "rewind":
                slots = (("copy", CopyOf(variable)),)
            copies = [
                self.add_weight(
                    name=f"{_slug(key)}_{slot}",
                    shape=variable.shape,
                    dtype=variable.dtype,
                    initializer=initializer,
                    trainable=False,
                )
                for slot, initializer in slots
            ]
            if len(copies) == 1:
                copies *= 2  # one variable serves as θ0, then as the rewind point
            self._saved.append(SavedWeight(key, variable, *copies, masks.get(id(variable))))

    def _mask_variable(self, name, shape, dtype):
        """A 0/1 mask variable, all ones: uint8, or `dtype` in files before layout 3."""
        return self.add_weight(
            name=name,
            shape=shape,
            dtype=self._mask_dtype or dtype,
            initializer="ones",
            trainable=False,
        )

    def _add_rewind_epoch(self):
        self.rewind_epoch = self.add_weight(
            name="rewind_epoch",
            shape=(),
            dtype="int32",
            initializer=keras.initializers.Constant(-1),
            trainable=False,
        )

    def _mask(self, variable, mask):
        """Installs `mask` as `variable`'s constraint, after the one it had."""
        constraint = MaskConstraint(mask, variable.constraint)
        variable.constraint = constraint
        self._constraints.append(constraint)
        self._mask_pairs.append((variable, mask))

    def _add_unit_mask(self, size, variables):
        """A 0/1 mask over the layer's output units, kept on `variables` (biases, BN γ and β).

        Unit criteria zero a pruned unit here, so that its whole channel is
        exactly zero and `shrink` can remove it wherever it goes.
        """
        self.unit_mask = self._mask_variable("unit_mask", (size,), "float32")
        for variable in variables:
            self._mask(variable, self.unit_mask)
        return {id(variable): self.unit_mask for variable in variables}

    def build(self, input_shape=None):
        self._build_layer(input_shape)
        masks = {}
        if isinstance(self.layer, keras.layers.BatchNormalization):
            channels = self.layer.moving_mean.shape[0]
            scales = [v for v in (self.layer.gamma, self.layer.beta) if v is not None]
            masks = self._add_unit_mask(channels, scales)
        self._add_saved_copies(masks)
        self._add_rewind_epoch()
        self.built = True

    def call(self, inputs, *args, training=None, **kwargs):
        remember_step_masks(self._constraints)
        direct = self._direct_call()
        # Named, so that Keras passes the training flag to the wrapper, as older
        # Keras releases do only for a call that declares it (BatchNormalization).
        if training is not None and direct in (None, "training"):
            kwargs["training"] = training
        if direct is None:
            return self.layer(inputs, *args, **kwargs)
        return self.layer.call(inputs, *args, **kwargs)

    def _direct_call(self):
        """Whether this wrapper may run its layer's `call` without `Layer.__call__`.

        On PyTorch every step runs eagerly, and the inner layer's `__call__`
        repeats, in Python, what the wrapper's own `__call__` has just done:
        converting and casting the inputs under the same dtype policy, the
        training flag, the name scope. Skipping it saves about a tenth of a
        LeNet-300-100 step. Only where nothing is lost: a built layer with the
        wrapper's dtype policy, no activity regularizer, no rematerialization,
        and no `mask` argument. Returns `None` (call it whole), `"call"`, or
        `"training"` (its `call` takes the training flag).
        """
        if not IN_PLACE:
            return None
        layer = self.layer
        policy = layer.dtype_policy.name
        if self._direct is not None and self._direct[0] == policy:
            return self._direct[1]
        direct = None
        if (
            layer.built
            and getattr(layer, "activity_regularizer", None) is None
            and getattr(layer, "_remat_mode", None) is None
            and policy == self.dtype_policy.name
        ):
            parameters = inspect.signature(layer.call).parameters
            if "mask" not in parameters:
                direct = "training" if "training" in parameters else "call"
        # Decided again if the layer's policy changes (Model.quantize, say).
        self._direct = (policy, direct)
        return direct

    def compute_mask(self, inputs, mask=None):
        return self.layer.compute_mask(inputs, mask)

    def get_config(self):
        # A wrapper loaded from layout 1 holds layout 2's variables, and writes them so.
        return {
            **super().get_config(),
            "layout_version": max(self._loaded_layout, 2),
            "keep": self.keep,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        # A config without a layout version was written by tf_lottery 0.1.
        return super().from_config({"layout_version": 1, **config}, custom_objects)

    def state_variables(self):
        """The wrapper's own variables (masks, thresholds, saved copies, counters),
        without the wrapped layer's weights, which the layer keeps itself."""
        weights = {id(v) for v in self.layer.variables}
        return [v for v in keras_private.own_variables(self) if id(v) not in weights]

    @property
    def variables(self):
        """The layer's state as Keras carries it through a train step.

        On JAX the compiled train step takes every non-trainable variable in and
        gives it back, and each one it gives back is written again at every step:
        LeNet-300-100's saved copies cost about 5% of its step that way. The
        wrapper's saved copies, thresholds and counters change only between steps,
        by tf_lottery's own code, so on JAX they stay out of `variables` (and so
        out of `non_trainable_variables` and the train step's state); the masks,
        which the step reads, stay in. `weights` lists them all, and saving writes
        them all.
        """
        variables = super().variables
        if not OUTSIDE_STEP or not self.built:
            return variables
        outside = {id(v) for v in self.state_variables()}
        outside -= {id(mask) for _, mask in self._mask_pairs}
        return [v for v in variables if id(v) not in outside]

    def save_own_variables(self, store):
        for index, variable in enumerate(self.state_variables()):
            store[str(index)] = ops.convert_to_numpy(variable.value)

    def load_own_variables(self, store):
        if self._loaded_layout == 1:
            return self._load_layout_1(store)
        variables = self.state_variables()
        if len(store.keys()) != len(variables):
            raise ValueError(
                f"{type(self).__name__} '{self.name}' has {len(variables)} variables, and the "
                f"file holds {len(store.keys())} for it: the file does not belong to this "
                "model, or was written by another version of tf_lottery."
            )
        for index, variable in enumerate(variables):
            variable.assign(store[str(index)])

    def _load_layout_1(self, store):
        """Every tracked variable, in tracking order, as Keras' default writes them."""
        return super().load_own_variables(store)

    def get_build_config(self):
        return {"layer": self.layer.get_build_config()}

    def build_from_config(self, config):
        layer_config = (config or {}).get("layer")
        if layer_config and not self.layer.built:
            self.layer.build_from_config(layer_config)
        self.build()

    @property
    def saved_weights(self):
        """Every weight with its `initial` and `rewind_point` copies (`SavedWeight`s)."""
        return list(self._saved)

    @property
    def initial_weights(self):
        """A dict from weight name to its initial-weights (θ0) variable.

        Raises a ValueError where the wrapper keeps no θ0: with `keep="masks"`,
        or with `keep="rewind"` once a rewind point has replaced it.
        """
        self.check_rewind("initial")
        return {s.name: s.initial for s in self._saved}

    def apply_masks(self):
        """Multiplies every masked weight by its mask: pruned weights, and the biases
        (or BatchNormalization γ and β) of pruned units."""
        for variable, mask in self._mask_pairs:
            variable.assign(ops.multiply(variable.value, ops.cast(mask.value, variable.dtype)))

    @property
    def has_rewind_point(self):
        """Whether `save_rewind_point` has been called."""
        return int(keras.ops.convert_to_numpy(self.rewind_epoch.value)) >= 0

    def save_initial_weights(self):
        """Copies the layer's current weights into the initial weights (θ0).

        Does nothing with `keep="masks"`. With `keep="rewind"` the copy is θ0
        again, and the rewind point it held is gone.
        """
        for saved in self._saved:
            assign_copy(saved.initial, saved.variable.value)
        if self.keep == "rewind":
            self.rewind_epoch.assign(-1)

    def check_rewind(self, to=None, *, rewind_epoch=None):
        """Raises a ValueError, naming `wrap`'s `keep`, if the layer cannot rewind `to`.

        Args:
            to: `"initial"`, `"rewind_point"`, or `None` to ask only whether the
                wrapper keeps a copy at all (a rewind point is saved later).
            rewind_epoch: The value of `self.rewind_epoch` where the caller has
                read it already (`tf_lottery.rewind` reads every wrapper's in one
                call), or `None` to read it here.
        """
        name = self.target_name
        if self.keep == "masks":
            raise ValueError(
                f"Layer '{name}' was wrapped with keep='masks', which keeps no copy of its "
                "weights to rewind to. Wrap the model with tf_lottery.wrap(model, "
                "keep='rewind') (the default) to rewind, or train without rewinding "
                "(IterativePruning(rewind=None), GradualPruning)."
            )
        if to is None:
            return
        if rewind_epoch is None and (to == "rewind_point" or self.keep == "rewind"):
            if not self.built:  # an unbuilt wrapper (a subclassed model) holds θ0 once built
                rewind_epoch = -1
            else:
                rewind_epoch = int(ops.convert_to_numpy(self.rewind_epoch.value))
        if to == "initial" and self.keep == "rewind" and rewind_epoch >= 0:
            raise ValueError(
                f"Layer '{name}' no longer holds θ0: with keep='rewind' the wrapper keeps one "
                f"copy, and the rewind point saved at epoch {rewind_epoch} replaced θ0. Rewind "
                "to='rewind_point', or wrap the model with tf_lottery.wrap(model, "
                "keep='both') to keep θ0 and a rewind point."
            )
        if to == "rewind_point" and rewind_epoch < 0:
            raise ValueError(
                f"Layer '{name}' has no rewind point saved yet; call "
                "save_rewind_point(epoch) first, or rewind to='initial'."
            )

    def save_rewind_point(self, epoch):
        """Copies the layer's current weights into the rewind point.

        Args:
            epoch: The number of epochs trained so far; recorded with the copy.
        """
        self.check_rewind()
        for saved in self._saved:
            assign_copy(saved.rewind_point, saved.variable.value)
        self.rewind_epoch.assign(epoch)

    def rewind(self, to="initial"):
        """Resets every weight to a saved copy, pruned weights staying at zero.

        Args:
            to: `"initial"` for θ0 or `"rewind_point"` for the copy saved by
                `save_rewind_point`. Defaults to `"initial"`.
        """
        if to not in REWIND_TARGETS:
            raise ValueError(f"Expected to='initial' or 'rewind_point'. Received: to={to!r}")
        self.check_rewind(to)
        for saved in self._saved:
            mask = None if saved.mask is None else saved.mask.value
            saved.variable.assign(rewound(getattr(saved, to).value, mask))


def rewound(value, mask):
    """What a rewind writes from a saved copy: the copy masked, or a copy of it.

    The masked product is a new buffer already; an unmasked value is copied (see
    `assign_copy`).
    """
    if mask is None:
        return ops.copy(value)
    return ops.multiply(value, ops.cast(mask, value.dtype))


@keras.saving.register_keras_serializable(package="tf_lottery")
class PruneWrapper(RewindWrapper):
    """Wraps a layer so that its weights can be pruned and rewound.

    For each prunable weight of the wrapped layer (a Dense kernel, a convolution
    kernel, embeddings, ...) the wrapper keeps a non-trainable 0/1 `mask` (one
    byte per weight) and the threshold of the last pruning round. Like a
    `RewindWrapper`, it keeps for every weight (biases included, as in Frankle &
    Carbin) what `keep` asks for: by default one copy, the initial weights (θ0)
    taken when the wrapper is built or by `save_initial_weights()`, which a later
    rewind point replaces. Pruned weights are exactly zero: the
    mask is multiplied into the weight whenever a pruning round runs and after
    every optimizer step (see `MaskConstraint`), so a weight once pruned stays
    zero. Everything lives in Keras variables, so `model.save()` keeps it.

    Masks are changed by `tf_lottery.prune` or the `IterativePruning` callback,
    not by the wrapper itself.

    Args:
        layer: The `keras.layers.Layer` to wrap. It must have prunable weights:
            Dense, EinsumDense, Conv1D/2D/3D and their Transpose versions,
            DepthwiseConv1D/2D, SeparableConv1D/2D, Embedding, MultiHeadAttention,
            SimpleRNN, LSTM, GRU, or any layer that defines
            `get_prunable_weights()` returning a list of its variables.
        keep: What the wrapper keeps to rewind to: `"rewind"`, `"both"` or
            `"masks"`, as for `RewindWrapper`. Defaults to `"rewind"`.
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

    _default_prefix = "prune"

    def __init__(self, layer, **kwargs):
        if (
            isinstance(layer, keras.layers.Layer)
            and not isinstance(layer, RewindWrapper)
            and (not is_prunable(layer) or (layer.built and not prunable_weights(layer)))
        ):
            raise ValueError(
                f"Layer '{layer.name}' of type {type(layer).__name__} has no prunable "
                "weights. Wrap Dense, EinsumDense, convolution, Embedding, "
                "MultiHeadAttention or RNN layers, or define get_prunable_weights() "
                "on your layer; tf_lottery.RewindWrapper keeps any other layer's "
                f"weights for rewinding. Received: layer={layer}"
            )
        super().__init__(layer, **kwargs)
        self._masked = []

    def _prunable_weights(self):
        """The variables of the built layer that get masks; the registry's choice."""
        return prunable_weights(self.layer)

    def build(self, input_shape=None):
        self._build_layer(input_shape)
        weights = self._prunable_weights()
        if not weights:
            raise ValueError(
                f"Layer '{self.layer.name}' has no prunable weights once built; "
                "its get_prunable_weights() returned an empty list."
            )
        masks = {}
        for variable in weights:
            key = _weight_key(self.layer, variable)
            mask = self._mask_variable(f"{_slug(key)}_mask", variable.shape, variable.dtype)
            threshold = self.add_weight(
                name=f"{_slug(key)}_threshold",
                shape=(),
                dtype="float32",
                initializer=keras.initializers.Constant(NO_THRESHOLD),
                trainable=False,
            )
            self._mask(variable, mask)
            masks[id(variable)] = mask
            self._masked.append(MaskedWeight(key, variable, mask, threshold))
        if has_unit_axis(self.layer):
            bias = [self.layer.bias] if getattr(self.layer, "bias", None) is not None else []
            units = self.layer.kernel.shape[-1]
            if isinstance(self.layer, (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)):
                units *= self.layer.kernel.shape[-2]
            masks.update(self._add_unit_mask(units, bias))
        self._add_saved_copies(masks)
        self.pruning_round = self.add_weight(
            name="pruning_round", shape=(), dtype="int32", initializer="zeros", trainable=False
        )
        self._add_rewind_epoch()
        # Training steps taken under a step schedule (GradualPruning): a variable
        # of its own, so that model.save keeps it and reset_optimizer (which
        # zeroes optimizer.iterations) leaves it alone.
        self.pruning_step = self.add_weight(
            name="pruning_step", shape=(), dtype="int32", initializer="zeros", trainable=False
        )
        # The IterativePruning stage under way: (key of its settings, the model's
        # rounds before it), so that its `rounds` count its own rounds and a
        # resume with initial_epoch tells itself from a new stage. (0, 0): none.
        self.pruning_stage = self.add_weight(
            name="pruning_stage", shape=(2,), dtype="int32", initializer="zeros", trainable=False
        )
        self.built = True

    def _load_layout_1(self, store):
        own = keras_private.own_variables(self)
        # Files written by older versions lack the variables added since, in this
        # order: pruning_stage, pruning_step, then unit_mask. Those keep their
        # initial values (no stage, step 0, every unit alive); the others load as
        # written.
        added = [self.pruning_stage, self.pruning_step, self.unit_mask]
        for count in range(len(added) + 1):
            missing = {id(v) for v in added[:count] if v is not None}
            present = [v for v in own if id(v) not in missing]
            if len(store.keys()) == len(present):
                if count == 0:
                    return super()._load_layout_1(store)
                for index, variable in enumerate(present):
                    variable.assign(store[str(index)])
                return
        super()._load_layout_1(store)  # Keras' own error for a count that fits no version

    @property
    def masked_weights(self):
        """The pruned weights, each a `MaskedWeight(name, variable, mask, threshold)`."""
        return list(self._masked)

    @property
    def masks(self):
        """A dict from weight name (e.g. `"kernel"`) to its mask variable."""
        return {m.name: m.mask for m in self._masked}


# The attribute of a model wrapped in place that holds its `PruningState`
# (tf_lottery.in_place).
STATE_ATTRIBUTE = "_tf_lottery_state"


def model_layers(model):
    """Every layer of `model`, recursively, each once: in model order, and the
    wrappers attached in place last, in the order they were attached."""
    state = model.__dict__.get(STATE_ATTRIBUTE)
    attached = state.wrappers if state is not None else []
    known = {id(w) for w in attached} | {id(state)}
    layers = [layer for layer in keras_private.flatten_layers(model) if id(layer) not in known]
    return layers + attached


def _wrappers_of(model):
    return [layer for layer in model_layers(model) if isinstance(layer, RewindWrapper)]


def find_wrappers(model):
    """Returns the `PruneWrapper` layers of `model`, each once, in model order.

    Works for Sequential, Functional and subclassed models, nested ones
    included, and for models wrapped in place. A layer shared between two
    calls appears once.
    """
    return [w for w in _wrappers_of(model) if isinstance(w, PruneWrapper)]


def find_rewind_wrappers(model):
    """Returns every wrapper of `model` that can rewind, `PruneWrapper`s included.

    In model order, each once.
    """
    return _wrappers_of(model)

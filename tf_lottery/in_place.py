"""Wrapping in place: pruning state attached to a built model's own layers.

`wrap` copies a plain Sequential or Functional model and puts wrappers into the
copy's graph. That cannot serve a model whose layers hold their prunable layers
inside (KerasHub's `TransformerEncoder` holds its attention and feed-forward
Dense layers), nor one whose class matters (`CausalLM.generate()`), nor one whose
config does not rebuild it faithfully. For those, the model is changed in place,
as Keras' own `Model.quantize()` does:

- every prunable layer, wherever it sits, gets an *attached* `PruneWrapper`, and
  every other layer with weights an attached `RewindWrapper`. They are the same
  classes as in a copied model, so criteria, callbacks, `rewind`, `sparsity` and
  the lottery runner use them unchanged; they are just not in the call path.
- masks still act as the weights' Keras constraints. On JAX the optimizer's
  update step does not see the mask variables, so the layer's own `call` hands
  the step's mask values over first (the job a wrapper's `call` does in a copied
  model): one small function set on the layer instance.
- the attached wrappers live in one `PruningState` layer, tracked by the model
  (its variables are part of the model's state, as JAX's train step needs) and
  saved by `model.save()` under its own name, with a layout that records which
  layer each wrapper belongs to. `keras.models.load_model` ignores it and gives
  the plain model, pruned weights zero; `tf_lottery.load_model` reattaches it.
"""

import fnmatch
import functools
import json

import keras
import numpy as np
from keras import ops

from tf_lottery import keras_private
from tf_lottery.registry import is_prunable
from tf_lottery.registry import prunable_weights
from tf_lottery.wrapper import PruneWrapper
from tf_lottery.wrapper import STATE_ATTRIBUTE
from tf_lottery.wrapper import RewindWrapper
from tf_lottery.masking import remember_step_masks

_ATTACHED_ATTRIBUTE = "_tf_lottery_attached"
# The layout JSON of a saved PruningState. 1: paths and kinds, wrappers of
# wrapper layout 2 (float masks, θ0 and a rewind point). 2: also "keep", wrappers
# of wrapper layout 3 (uint8 masks, the copies `keep` names).
LAYOUT_VERSION = 2
_WRAPPER_LAYOUT = {1: 2, 2: 3}


class _Hidden:
    """Holds a value where Keras' tracking and its saving walk do not look."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


def _slug(path):
    return path.replace("/", "__")


class _Attached:
    """What an attached wrapper has beyond a wrapper in a graph."""

    @property
    def target_name(self):
        # Names repeat across blocks ("query" in every one); paths do not.
        return self.layer.path

    def _rewound_variables(self):
        # A layer whose sublayers have wrappers of their own keeps only its own
        # variables here; the sublayers' are kept by theirs.
        if keras_private.direct_sublayers(self.layer) and not isinstance(self, PruneWrapper):
            return keras_private.own_variables(self.layer)
        return self.layer.weights


class AttachedPruneWrapper(_Attached, PruneWrapper):
    """A `PruneWrapper` attached to a layer that stays where it is in the model."""


class AttachedRewindWrapper(_Attached, RewindWrapper):
    """A `RewindWrapper` attached to a layer that stays where it is in the model."""


class PruningState(keras.layers.Layer):
    """The pruning state of a model wrapped in place: its attached wrappers.

    Saved by `model.save()` as one entry of the weights file: a layout (which
    layer each wrapper belongs to, and its kind) and every wrapper variable.
    Not part of the model's config, so a plain `keras.models.load_model` skips it.
    """

    def __init__(self, wrappers, **kwargs):
        super().__init__(name="tf_lottery_state", **kwargs)
        for wrapper in wrappers:
            # Tracked, so that the variables are the model's state; not an
            # attribute, so that the saving walk stops here (save_own_variables
            # writes them all, with the layout).
            keras_private.track_sublayer(self, wrapper)
        self._wrappers = _Hidden(list(wrappers))
        self.built = True

    @property
    def wrappers(self):
        return list(self._wrappers.value)

    def layout(self):
        wrappers = self.wrappers
        # A state loaded from a version 1 file keeps that file's variables.
        version = 1 if wrappers and wrappers[0]._loaded_layout < 3 else LAYOUT_VERSION
        keep = {"keep": wrappers[0].keep} if wrappers and version >= 2 else {}
        return {
            "version": version,
            **keep,
            "layers": [
                {"path": w.layer.path, "kind": "prune" if isinstance(w, PruneWrapper) else "rewind"}
                for w in self.wrappers
            ],
        }

    def state_variables(self):
        """The wrappers' variables (masks, θ0, ...), without the layers' own weights."""
        return [v for w in self.wrappers for v in w.state_variables()]

    def save_own_variables(self, store):
        store["layout"] = np.frombuffer(json.dumps(self.layout()).encode(), dtype=np.uint8)
        for index, variable in enumerate(self.state_variables()):
            store[str(index)] = ops.convert_to_numpy(variable.value)

    def load_own_variables(self, store):
        saved = read_layout(store)
        if not _same_layers(saved["layers"], self.layout()["layers"]):
            raise ValueError(
                "The saved pruning state belongs to other layers than this model's: saved "
                f"{[e['path'] for e in saved['layers']]}, this model "
                f"{[e['path'] for e in self.layout()['layers']]}."
            )
        variables = self.state_variables()
        if len(store.keys()) - 1 != len(variables):
            raise ValueError(
                f"The saved pruning state has {len(store.keys()) - 1} variables, this model's "
                f"{len(variables)}: it was written by another version of tf_lottery."
            )
        for index, variable in enumerate(variables):
            variable.assign(store[str(index)])


def read_layout(store):
    """The layout dict that `PruningState.save_own_variables` wrote into `store`."""
    return json.loads(bytes(np.asarray(store["layout"], dtype=np.uint8)).decode())


def state_of(model):
    """The `PruningState` attached to `model`, or `None`."""
    return model.__dict__.get(STATE_ATTRIBUTE)


def attached_wrapper(layer):
    """The wrapper attached to `layer`, or `None`."""
    hidden = layer.__dict__.get(_ATTACHED_ATTRIBUTE)
    return hidden.value if hidden is not None else None


def matching(layers, pattern):
    """The layers that the glob `pattern` names, or that sit inside a layer it names.

    A pattern names a layer by its path (`"transformer_layer_0/self_attention"`)
    or its name (`"query"`, in every block). Naming a composite layer names what
    it holds: `"embedding"` excludes a `TokenAndPositionEmbedding`'s token and
    position embeddings, `"*/self_attention"` every block's attention.
    """
    return [layer for layer in layers if any(_named_by(layer, pattern))]


def _named_by(layer, pattern):
    yield fnmatch.fnmatchcase(layer.name, pattern)
    parts = layer.path.split("/")
    for end in range(1, len(parts) + 1):
        yield fnmatch.fnmatchcase("/".join(parts[:end]), pattern)
        yield fnmatch.fnmatchcase(parts[end - 1], pattern)


def _matches(layer, patterns):
    return any(matching([layer], p) for p in patterns)


def _refuse_unsupported(unit):
    for layer in [unit, *keras_private.flatten_layers(unit)]:
        _refuse_unsupported_layer(layer)


def _refuse_unsupported_layer(layer):
    if getattr(layer, "lora_enabled", False):
        raise ValueError(
            f"Layer '{layer.path}' has LoRA enabled: its kernel is the frozen base plus "
            "a low-rank update, which a mask on one variable cannot prune. Merge the "
            "update first (or prune before layer.enable_lora()), or exclude the layer."
        )
    if getattr(layer, "quantization_mode", None):
        raise ValueError(
            f"Layer '{layer.path}' is quantized ({layer.quantization_mode}): prune the "
            "float model, then quantize it (model.quantize() or export_tflite(quantize=...))."
        )


def _sublayers(layer):
    """`layer`'s direct sublayers; a graph model's in the order of its graph."""
    ordered = list(layer.layers) if keras_private.is_graph_model(layer) else []
    known = {id(sub) for sub in ordered}
    return ordered + [s for s in keras_private.direct_sublayers(layer) if id(s) not in known]


def plan(model, exclude=()):
    """The layers of `model` to prune and to rewind, and those left frozen.

    Walks every layer, inside composite layers too. A prunable layer (the
    registry's) is one unit: its sublayers are not visited (MultiHeadAttention's
    projections are its own). Any other layer with variables of its own is
    rewound, and its sublayers visited.

    Returns:
        `(prune, rewind, frozen, excluded, unreached)`: lists of layers. The
        prunable layers `exclude` matched are in `excluded` and in `rewind`;
        `unreached` holds layers with a trainable weight of two or more
        dimensions that no rule prunes (a user's layer without
        `get_prunable_weights()`).
    """
    prune, rewind, frozen, excluded, unreached = [], [], [], [], []
    seen = set()

    def visit(layer):
        for sub in _sublayers(layer):
            if id(sub) in seen or isinstance(sub, (PruningState, RewindWrapper)):
                continue
            seen.add(id(sub))
            own = keras_private.own_variables(sub)
            if is_prunable(sub) and sub.built and prunable_weights(sub):
                if _matches(sub, exclude):
                    excluded.append(sub)
                    rewind.append(sub)
                    continue
                # Before the frozen check: enable_lora() freezes the base kernel.
                _refuse_unsupported(sub)
                (prune if sub.trainable else frozen).append(sub)
                continue
            if own and sub.trainable and not isinstance(sub, keras.Model):
                rewind.append(sub)
                if any(len(v.shape) >= 2 and v.trainable for v in own):
                    unreached.append(sub)
            visit(sub)

    visit(model)
    # The layers that give the model's outputs go last: criteria treat the last
    # wrapper as the output layer (PruneFraction's output_rate), and a CausalLM's
    # output comes from its tied token embedding, visited first.
    outputs = _output_layers(model)
    prune.sort(key=lambda layer: id(layer) in outputs)
    return prune, rewind, frozen, excluded, unreached


def _output_layers(model):
    if not keras_private.is_graph_model(model):
        return set()
    return {id(operation) for operation in keras_private.output_operations(model)}


def _hand_over_masks(layer, wrapper):
    """Makes `layer.call` hand its wrapper's step masks to the constraints first."""
    call = layer.call

    @functools.wraps(call)
    def call_with_masks(*args, **kwargs):
        remember_step_masks(wrapper._constraints)
        return call(*args, **kwargs)

    # Set on the instance, past Keras' attribute tracking: the layer object,
    # its place in the graph and every caller (generate() too) stay the same.
    object.__setattr__(layer, "call", call_with_masks)
    object.__setattr__(layer, _ATTACHED_ATTRIBUTE, _Hidden(wrapper))


def attach(model, prune, rewind, *, keep="rewind", layout_version=LAYOUT_VERSION):
    """Attaches wrappers to the layers `prune` and `rewind` of `model`, in place.

    `keep` is `wrap`'s; `layout_version` that of the saved state being loaded.
    """
    paths = [layer.path for layer in prune + rewind]
    repeated = sorted({p for p in paths if paths.count(p) > 1})
    if repeated:
        raise ValueError(
            f"Layers of model '{model.name}' share the paths {repeated}, so their pruning "
            "state could not be told apart when saved. Give them distinct names."
        )
    wrappers = []
    for layer in prune + rewind:
        cls = AttachedPruneWrapper if any(layer is p for p in prune) else AttachedRewindWrapper
        wrapper = cls(
            layer,
            name=f"{cls._default_prefix}_{_slug(layer.path)}",
            keep=keep,
            layout_version=_WRAPPER_LAYOUT[layout_version],
        )
        wrapper.build()
        if wrapper._constraints:
            _hand_over_masks(layer, wrapper)
        wrappers.append(wrapper)
    state = PruningState(wrappers)
    keras_private.track_sublayer(model, state)
    object.__setattr__(model, STATE_ATTRIBUTE, state)
    return state


def detach(model):
    """Removes the pruning state from `model`: masks applied, constraints and call restored."""
    state = state_of(model)
    for wrapper in state.wrappers:
        wrapper.apply_masks()
        for variable, _ in wrapper._mask_pairs:
            constraint = variable.constraint
            variable.constraint = getattr(constraint, "constraint", None)
        wrapper.layer.__dict__.pop("call", None)
        wrapper.layer.__dict__.pop(_ATTACHED_ATTRIBUTE, None)
    keras_private.untrack_sublayer(model, state)
    del model.__dict__[STATE_ATTRIBUTE]
    return model


def _same_layers(saved, current):
    """Whether two layouts' layers agree, a path built inside an outer name scope included."""
    return len(saved) == len(current) and all(
        a["kind"] == b["kind"] and (a["path"] == b["path"] or b["path"].endswith("/" + a["path"]))
        for a, b in zip(saved, current)
    )


def _layers_by_path(model):
    """`model`'s layers by path, and by path below the scope the model was built in.

    A layer's path is the name scope it was built in: a model built (or loaded)
    inside `keras.name_scope("outer")` has `outer/fc1` where the saved layout says
    `fc1`. The exact path is tried first.
    """
    layers = [layer for layer in keras_private.flatten_layers(model) if layer.path]
    parents = [layer.path.split("/")[:-1] for layer in layers]
    root = 0
    while parents and all(len(p) > root and p[root] == parents[0][root] for p in parents):
        root += 1
    by_path = {"/".join(layer.path.split("/")[root:]): layer for layer in layers}
    by_path.update({layer.path: layer for layer in layers})
    return by_path


def attach_from_layout(model, layout):
    """Attaches wrappers to the layers a saved layout names; returns the state."""
    version = layout.get("version")
    if version not in _WRAPPER_LAYOUT:
        raise ValueError(
            f"The pruning state was saved in layout version {version}; this tf_lottery "
            f"reads versions {sorted(_WRAPPER_LAYOUT)}. Upgrade tf_lottery."
        )
    by_path = _layers_by_path(model)
    missing = [e["path"] for e in layout["layers"] if e["path"] not in by_path]
    if missing:
        raise ValueError(
            f"The saved pruning state names layers that model '{model.name}' does not have: "
            f"{missing}."
        )
    prune = [by_path[e["path"]] for e in layout["layers"] if e["kind"] == "prune"]
    rewind = [by_path[e["path"]] for e in layout["layers"] if e["kind"] == "rewind"]
    state = attach(model, prune, rewind, keep=layout.get("keep", "both"), layout_version=version)
    if not _same_layers(layout["layers"], state.layout()["layers"]):
        # attach() puts pruned layers first; the saved order is the one to keep.
        detach(model)
        raise ValueError("The saved pruning state lists pruned layers after rewound ones.")
    return state

"""The few private Keras 3 APIs tf_lottery needs, in one place.

Each has no public equivalent in Keras 3.15. Keeping them here means a Keras
upgrade that moves one breaks this module only, and the tests say where.
"""

from keras.src.backend.common import global_state
from keras.src.backend.common.stateless_scope import get_stateless_scope
from keras.src.applications.convnext import LayerScale
from keras.src.models.functional import Functional

__all__ = [
    "LayerScale",
    "build_unallocated",
    "call_arguments",
    "direct_sublayers",
    "graph_inputs",
    "graph_nodes",
    "graph_outputs",
    "flatten_layers",
    "get_stateless_scope",
    "initialize_deferred",
    "input_shape_arg",
    "is_graph_model",
    "is_plain_graph_model",
    "optimizer_model_variables",
    "output_operations",
    "own_variables",
    "tensor_key",
    "track_sublayer",
    "untrack_sublayer",
]


def flatten_layers(layer):
    """Every layer inside `layer`, recursively, each once (not `layer` itself).

    `Model.layers` is public but lists only the top level, and plain layers that
    hold sublayers (MultiHeadAttention, a user's block) have no public listing.
    """
    return list(layer._flatten_layers(include_self=False))


def direct_sublayers(layer):
    """The layers tracked directly by `layer`, in tracking order."""
    return list(layer._layers)


def own_variables(layer):
    """The variables `layer` created itself, not those of its sublayers."""
    return list(layer._trainable_variables) + list(layer._non_trainable_variables)


def input_shape_arg(layer):
    """The `input_shape=` a layer was given (Keras 2 style), or `None`.

    `keras.Sequential` builds its input from its first layer's; a wrapper made
    around such a layer passes it on, so that the Sequential is built.
    """
    return getattr(layer, "_input_shape_arg", None)


def is_graph_model(model):
    """Whether `model` is Sequential or Functional (a graph of layers).

    Keras exports no `Functional` class: `keras.Model(inputs, outputs)` returns one.
    """
    import keras

    return isinstance(model, (keras.Sequential, Functional))


def is_plain_graph_model(model):
    """Whether `model` is exactly a Sequential or a Functional, not a subclass of one."""
    import keras

    return type(model) in (keras.Sequential, Functional)


def optimizer_model_variables(optimizer):
    """The model variables a built optimizer was built for, in build order.

    `optimizer.build(variables)` needs them again to make a fresh twin, and the
    optimizer only keeps them privately.
    """
    return list(optimizer._trainable_variables)


def build_unallocated(optimizer, variables):
    """Builds `optimizer` for `variables` without allocating its slots.

    The build runs in a `keras.StatelessScope`, where Keras defers each variable's
    initializer; the deferred variables are then taken off Keras' list of
    variables to initialize later, so they never hold memory.

    Returns:
        One entry per variable of `optimizer`, in order: the initializer of a
        deferred variable, or `None` for one that already holds a value (made
        before the build, such as the iteration count).

    Raises:
        ValueError: where the build creates a variable from a value (Nadam's
            `u_product`, Adafactor's), which a stateless scope refuses. Nothing
            is left registered; the caller builds a fresh optimizer for real.
    """
    import keras

    key = "uninitialized_variables"
    before = list(global_state.get_global_attribute(key, None) or [])
    try:
        with keras.StatelessScope(initialize_variables=False):
            optimizer.build(variables)
    finally:
        known = {id(v) for v in before}
        after = global_state.get_global_attribute(key, None) or []
        global_state.set_global_attribute(key, [v for v in after if id(v) in known])
    return [v._initializer if v._value is None else None for v in optimizer.variables]


def initialize_deferred(variable):
    """Allocates a variable that `build_unallocated` deferred, from its initializer."""
    variable._deferred_initialize()


def graph_nodes(model):
    """The calls of a Sequential or Functional `model`, in topological order.

    Keras keeps the graph of layer calls in private nodes; `model.operations`
    lists the layers but not which tensor feeds which.

    Returns:
        A list of `(operation, input_tensors, output_tensors)`, one per call, each
        call once, producers before consumers.
    """
    graph = getattr(model, "_functional", model)  # Sequential keeps a Functional inside
    order, seen = [], set()

    def visit(tensor):
        operation, node_index, _ = tensor._keras_history
        key = (id(operation), node_index)
        if key in seen:
            return
        seen.add(key)
        node = operation._inbound_nodes[node_index]
        for parent in node.input_tensors:
            visit(parent)
        order.append((operation, list(node.input_tensors), list(node.output_tensors)))

    for output in graph.outputs:
        visit(output)
    return order


def tensor_key(tensor):
    """A hashable key for a symbolic tensor of a model's graph."""
    operation, node_index, tensor_index = tensor._keras_history
    return id(operation), node_index, tensor_index


def graph_inputs(model):
    """The input tensors of a Sequential or Functional `model`'s graph."""
    return list(getattr(model, "_functional", model).inputs)


def graph_outputs(model):
    """The output tensors of a Sequential or Functional `model`'s graph."""
    return list(getattr(model, "_functional", model).outputs)


def call_arguments(tensor):
    """`(args, kwargs)` of the call that made `tensor` in a model's graph.

    An operator node (`x + 3`, `keras.ops.clip(x, 0, 6)`) keeps its constants
    only there: `graph_nodes` gives its tensor inputs alone.
    """
    operation, node_index, _ = tensor._keras_history
    arguments = operation._inbound_nodes[node_index].arguments
    return arguments.args, arguments.kwargs


def output_operations(model):
    """The operations (layers) whose calls give a graph `model`'s outputs."""
    return [tensor._keras_history[0] for tensor in graph_outputs(model)]


def track_sublayer(owner, layer):
    """Makes `owner` track `layer` as a sublayer, even once built (its tracker locked).

    The layer's variables then count among `owner.variables`, as a JAX train step
    needs. `Model.quantize()` unlocks trackers the same way to add variables.
    """
    tracker = owner._tracker
    locked = tracker.locked
    tracker.unlock()
    try:
        tracker.add_to_store("layers", layer)
    finally:
        if locked:
            tracker.lock()


def untrack_sublayer(owner, layer):
    """Undoes `track_sublayer(owner, layer)`."""
    tracker = owner._tracker
    locked = tracker.locked
    tracker.unlock()
    try:
        tracker.untrack(layer)
    finally:
        if locked:
            tracker.lock()

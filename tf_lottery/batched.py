"""Reading and writing many variables in one call: what a pruning round does.

A round reads every pruned weight and mask, then writes masks, thresholds,
rewound weights and optimizer slots: a few dozen small backend operations per
tensor. Run one by one, each is an eager operation, 50-100 µs on TensorFlow and
a dispatch on JAX, so on a small model the operations, not the arithmetic, make
the round's time. Here a group of them becomes one call: a `tf.function` on
TensorFlow, a `jax.jit` function on JAX (whose results are then assigned, since
JAX variables are plain references), and the eager operations on PyTorch, which
are cheap there.

A group is compiled at its second use with the same variables, so a one-shot
`prune` pays no tracing. Compiled groups are kept per owner (a model, an
optimizer), forgotten with it, and keyed by the identity of every variable they
touch: a rebuilt optimizer or wrapper gets a new one. Groups hold no more than
`BATCH_WEIGHTS` values at a time; larger models go tensor by tensor, where the
operations cost little beside the data.
"""

import collections
import weakref

import keras
import numpy as np

# Groups that would touch more than this many values run tensor by tensor: for
# those the per-operation cost is small beside the data, and reading them all at
# once would hold every tensor in host memory.
BATCH_WEIGHTS = 1 << 22

# Compiled groups kept per owner; a model whose rounds prune changing subsets of
# layers needs a few.
_PER_OWNER = 16

# owner -> OrderedDict(key -> [uses, compiled function or None])
_GROUPS = weakref.WeakKeyDictionary()

_BACKEND = keras.backend.backend()


def size(variables):
    """The number of values that `variables` hold together."""
    return sum(int(np.prod(v.shape)) for v in variables)


def _entry(owner, kind, name, variables):
    groups = _GROUPS.get(owner)
    if groups is None:
        groups = _GROUPS[owner] = collections.OrderedDict()
    key = (kind, name, *(id(v) for v in variables))
    entry = groups.get(key)
    if entry is None:
        # The entry holds the variables, so that no id in its key is reused.
        entry = groups[key] = [0, None, list(variables)]
        if len(groups) > _PER_OWNER:
            groups.popitem(last=False)
    groups.move_to_end(key)
    entry[0] += 1
    return entry


def compiles():
    """Whether groups are compiled here: on TensorFlow, and on JAX in one process
    (in several, every process would have to place the inputs alike)."""
    if _BACKEND == "jax":
        import jax

        return jax.process_count() == 1
    return _BACKEND == "tensorflow"


def run(owner, name, reads, writes, body, inputs=()):
    """Assigns `body(values of reads, inputs)` to `writes`, in one call where it pays.

    Args:
        owner: The object the compiled group is kept with (a model, an optimizer).
        name: Names the group within its owner, with the variables.
        reads: Variables whose values `body` gets, as a list, in this order.
        writes: Variables that get `body`'s results, in order.
        body: A function of (list of values, tuple of inputs) to a list of new
            values, one per variable of `writes`, written with `keras.ops`. A
            result must be a new tensor, never an input itself (`ops.copy` it):
            on JAX two variables must not share a buffer.
        inputs: numpy arrays (not Python numbers, which would retrace); their
            shapes and dtypes must stay the same from call to call.
    """
    entry = _entry(owner, "run", name, [*reads, *writes]) if compiles() else None
    if entry is None or entry[0] < 2:
        for variable, value in zip(writes, body([v.value for v in reads], tuple(inputs))):
            variable.assign(value)
        return
    if entry[1] is None:
        entry[1] = _compile(reads, writes, body, tuple(inputs))
    entry[1](tuple(inputs))


def _compile(reads, writes, body, inputs):
    if _BACKEND == "tensorflow":
        import tensorflow as tf

        @tf.function(autograph=False)
        def group(inputs):
            for variable, value in zip(writes, body([v.value for v in reads], inputs)):
                variable.assign(value)

        # A concrete function skips matching the call to a trace: half the call's time.
        specs = tf.nest.map_structure(lambda a: tf.TensorSpec(a.shape, a.dtype), inputs)
        return group.get_concrete_function(specs)
    import jax

    pure = jax.jit(body)

    def group(inputs):
        for variable, value in zip(writes, pure([v.value for v in reads], inputs)):
            variable.assign(value)

    return group


def read(owner, name, variables):
    """The values of `variables` as numpy arrays, read in one call where it pays."""
    entry = _entry(owner, "read", name, variables) if _BACKEND == "tensorflow" else None
    if entry is None or entry[0] < 2:
        return [np.asarray(keras.ops.convert_to_numpy(v.value)) for v in variables]
    if entry[1] is None:
        import tensorflow as tf

        group = tf.function(lambda: [tf.identity(v.value) for v in variables], autograph=False)
        entry[1] = group.get_concrete_function()
    return [value.numpy() for value in entry[1]()]

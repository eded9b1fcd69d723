"""The smaller model: which rows and columns of each weight `shrink` keeps, and the rebuild.

`Plan` collects, per layer, the output units and input channels to keep and the
constants to fold into biases; `rebuild` makes the plain Keras model with fewer
units from it, copying the kept slices of every weight by position.
"""

import keras
import numpy as np

from tf_lottery import keras_private
from tf_lottery.registry import per_channel_axes
from tf_lottery.registry import resized_config
from tf_lottery.registry import unit_count_key
from tf_lottery.structured.kernels import kernel_reader
from tf_lottery.structured.removable import input_constant
from tf_lottery.transforms import fresh_copy

L = keras.layers


class Plan:
    """What to keep of each layer's input and output channels, and bias folds."""

    def __init__(self, values):
        self.values = values
        self.keep_out = {}  # layer id -> bool array over output units
        self.keep_in = {}  # layer id -> bool array over kernel input rows/channels
        self.keep_channels = {}  # follower id -> bool array over its channels
        self.bias_fold = {}  # layer id -> array added to the bias
        self.keep_heads = {}  # attention layer id -> (HeadGroup, bool array over its units)
        self.changed = False

    def add_heads(self, group, removed):
        if not removed:
            return
        self.changed = True
        keep = np.ones(group.size, bool)
        keep[removed] = False
        self.keep_heads[id(group.layer)] = (group, keep)

    def resized_attention(self, layer):
        """The config of `layer` (an attention layer) with fewer heads, or `None`."""
        if id(layer) not in self.keep_heads:
            return None
        group, keep = self.keep_heads[id(layer)]
        return group.resized_config(int(keep.sum()))

    def _head_weights(self, layer):
        group, keep = self.keep_heads[id(layer)]
        slices = {id(s.variable): s for s in (*group.masked, *group.biases)}
        kept = np.flatnonzero(keep)
        values = []
        for variable in layer.weights:
            value = keras.ops.convert_to_numpy(variable.value)
            part = slices.get(id(variable))
            values.append(value if part is None else value[part.index(value, kept)])
        return values

    def add(self, group, removed, constants):
        if not removed:
            return
        self.changed = True
        for producer in group.producers:
            keep = self.keep_out.setdefault(id(producer), np.ones(group.size, bool))
            keep[removed] = False
        for follower, offset in group.followers:
            weights = self.values[id(follower)]
            width = next(
                weights[name].shape[axis]
                for name, axis in per_channel_axes(follower).items()
                if axis is not None
            )
            keep = self.keep_channels.setdefault(id(follower), np.ones(width, bool))
            keep[[offset + c for c in removed]] = False
        for consumer in group.consumers:
            layer, reader = consumer.layer, kernel_reader(consumer.layer)
            kernel = self.values[id(layer)]["kernel"]
            keep = self.keep_in.setdefault(id(layer), np.ones(reader.size(kernel, consumer), bool))
            constant = input_constant(consumer, constants)
            fold = self.bias_fold.setdefault(id(layer), np.zeros(kernel.shape[-1]))
            for channel in removed:
                reader.drop(keep, consumer, channel)
                value = constant[consumer.offset + channel]
                if not np.isnan(value) and value != 0:
                    read, columns = reader.read(layer, kernel, consumer, channel)
                    fold[columns] += value * read.reshape(-1, read.shape[-1]).sum(0)

    def new_units(self, layer):
        keep = self.keep_out.get(id(layer))
        return None if keep is None else int(keep.sum())

    def new_channels(self, layer):
        keep = self.keep_channels.get(id(layer))
        return None if keep is None else int(keep.sum())

    def changes(self, layer):
        return any(
            id(layer) in part
            for part in (
                self.keep_out,
                self.keep_in,
                self.keep_channels,
                self.bias_fold,
                self.keep_heads,
            )
        )

    def adds_bias(self, layer):
        """Whether a constant must be folded into a layer that has no bias (it gets one)."""
        fold = self.bias_fold.get(id(layer))
        return fold is not None and np.any(fold != 0) and not getattr(layer, "use_bias", True)

    def weights_for(self, layer):
        """The old layer's weights, sliced and folded, in the order of its smaller copy's."""
        if id(layer) in self.keep_heads:
            return self._head_weights(layer)
        names = [w.name for w in layer.weights]
        weights = dict(self.values[id(layer)])
        key = id(layer)
        if key in self.keep_channels:
            kept = np.flatnonzero(self.keep_channels[key])
            for name, axis in per_channel_axes(layer).items():
                if axis is not None:
                    weights[name] = np.take(weights[name], kept, axis=axis)
        if key in self.keep_in:
            weights["kernel"] = kernel_reader(layer).kept(
                layer, weights["kernel"], self.keep_in[key]
            )
        if self.adds_bias(layer):
            names.append("bias")  # Keras layers create their bias after their kernel
            weights["bias"] = np.zeros(weights["kernel"].shape[-1], weights["kernel"].dtype)
        if key in self.bias_fold and "bias" in weights:
            weights["bias"] = (weights["bias"] + self.bias_fold[key]).astype(weights["bias"].dtype)
        if key in self.keep_out:
            keep = self.keep_out[key]
            weights["kernel"] = weights["kernel"][..., keep]
            if "bias" in weights:
                weights["bias"] = weights["bias"][keep]
        return [weights[name] for name in names]


def rebuild(plain, plan):
    copies = {}

    def clone_function(layer):
        units = plan.new_units(layer)
        channels = plan.new_channels(layer)
        if isinstance(layer, L.Reshape) and -1 not in layer.target_shape:
            # Keeps the channel axis (or shrink would not have followed it): let it
            # take the channels that are left.
            config = {**layer.get_config(), "target_shape": (*layer.target_shape[:-1], -1)}
            copy = L.Reshape.from_config(config)
        elif plan.resized_attention(layer) is not None:
            copy = layer.__class__.from_config(plan.resized_attention(layer))
        elif units is None and channels is None and not plan.adds_bias(layer):
            copy = fresh_copy(layer)
        else:
            config = layer.get_config()
            if units is not None:
                config[unit_count_key(layer)] = units
            if channels is not None:
                config = resized_config(layer, config, channels)
            if plan.adds_bias(layer):
                config["use_bias"] = True
            copy = layer.__class__.from_config(config)
        copies[id(layer)] = copy
        return copy

    small = keras.models.clone_model(plain, clone_function=clone_function, recursive=True)
    for layer in keras_private.flatten_layers(plain):
        copy = copies.get(id(layer))
        if copy is None or copy is layer or not layer.weights:
            continue
        if plan.changes(layer) or plan.adds_bias(layer):
            values = plan.weights_for(layer)
        else:
            values = [variable.value for variable in layer.weights]
        for variable, value in zip(copy.weights, values, strict=True):
            variable.assign(value)
    return small

"""How a producer's kernel reads its input channels: what `shrink` slices and folds.

A producer (`LayerKind(channels="produce")`) reads its input in one of two
layouts, named by its table entry's `kernel_input`:

- `"rows"`, a Dense kernel `[in, out]`: channel c of a group is row
  `p * width + offset + c` at each of the positions that a `Flatten` before it
  spreads the channel over (`Consumer.rows`). A constant channel folds into the
  bias exactly, whatever the layer.
- `"channels"`, a convolution kernel `[..., in per group, out]`: channel i is
  row `i % per_group` of the kernel's input axis, read by the output columns of
  its group (a grouped convolution holds each group's units in a block of
  columns). A constant folds only where no padding reaches the kernel: `"valid"`
  padding, or a 1x1 kernel.

`kernel_reader(layer)` gives the reader of a layer's entry; `removable` asks it
which rows read a channel and whether a constant folds, `rebuild` how to slice
the kernel.
"""

import numpy as np

from tf_lottery.registry import layer_kind


class _Rows:
    """A kernel `[in, out]` read by flattened positions (Dense)."""

    flattened = True  # may read a Flatten's positions

    def size(self, kernel, consumer):
        """The length of the keep-flags over the kernel's inputs."""
        return kernel.shape[0]

    def drop(self, keep, consumer, channel):
        keep[consumer.rows(channel)] = False

    def read(self, layer, kernel, consumer, channel):
        """`(the weights that read channel, the output columns they feed)`."""
        return kernel[consumer.rows(channel), :], slice(None)

    def foldable(self, layer):
        return True

    def kept(self, layer, kernel, keep):
        return kernel[keep]


class _Channels:
    """A kernel `[..., in per group, out]` read by channel, per group (convolutions)."""

    flattened = False

    def size(self, kernel, consumer):
        return consumer.width

    def drop(self, keep, consumer, channel):
        keep[consumer.offset + channel] = False

    def read(self, layer, kernel, consumer, channel):
        groups = getattr(layer, "groups", 1)
        index = consumer.offset + channel
        per_group, width = kernel.shape[-2], kernel.shape[-1] // groups
        group = index // per_group
        columns = slice(group * width, (group + 1) * width)
        return kernel[..., index % per_group, columns], columns

    def foldable(self, layer):
        # A layer of one's own without these attributes folds nothing: its padding is unknown.
        padding, size = getattr(layer, "padding", None), getattr(layer, "kernel_size", None)
        return padding == "valid" or (size is not None and all(k == 1 for k in size))

    def kept(self, layer, kernel, keep):
        """Per group of a grouped convolution: its kept rows, its block of columns."""
        per_group, groups = kernel.shape[-2], getattr(layer, "groups", 1)
        width = kernel.shape[-1] // groups
        return np.concatenate(
            [
                kernel[..., keep[g * per_group : (g + 1) * per_group], :][
                    ..., g * width : (g + 1) * width
                ]
                for g in range(groups)
            ],
            axis=-1,
        )


READERS = {"rows": _Rows(), "channels": _Channels()}


def kernel_reader(layer):
    """The reader of a producer's kernel, from its layer table entry."""
    return READERS[layer_kind(layer).kernel_input]

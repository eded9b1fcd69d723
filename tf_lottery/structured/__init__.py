"""Structured pruning: whole units, the channel groups they form, and the smaller model.

- `units`: the unit criteria `UnitNorm`, `BatchNormScale`, `UnitStdThreshold` and
  `UnitActivation` (`UnitCriterion` is their base).
- `channels`: `channel_groups`, which units go together through a graph (a residual
  Add, a concatenation, a depthwise convolution, ...), read from the layer table.
- `heads`: attention heads and key/value groups as units, one entry per attention class.
- `hub_units`: KerasHub transformer blocks' feed-forward units and key/value groups.
- `shrink`: `shrink` and `shrink_report`, the smaller dense model.
- `target`: `Target`, pruning to a budget of MACs, parameters or latency.

The public names are `tf_lottery.UnitNorm`, `tf_lottery.shrink`, ...; this file
imports nothing, so that importing one of its modules loads only what it needs.
"""

"""Latency of a model: measured in LiteRT on this machine, or predicted from a table.

The x86 host is not the phone. `LatencyTable` holds per-layer costs measured
elsewhere (NetAdapt's look-up tables, Yang et al. 2018) and predicts the latency
of a shrunk model from its per-layer units and MACs, the `ShrinkReport`.
`litert_latency` measures a Keras model here: converted to a float32 .tflite
file, run in LiteRT with its default delegate (XNNPACK), batch 1. LiteRT's
Python interpreter offers no per-operator profiler (only its C++ benchmark tool
does), so the whole model is timed.

A table, as JSON:

```json
{
  "device": "Pixel 7, LiteRT 1.4, 1 thread, float32",
  "fixed_ms": 0.05,
  "default_ms_per_mac": 1.5e-7,
  "layers": {
    "conv1": {"ms_per_mac": 2.0e-7},
    "conv2": {"units": [16, 32, 64], "ms": [0.06, 0.10, 0.19]}
  }
}
```

or as CSV, one row per point, `*` naming the fixed cost:

```
layer,units,ms,ms_per_mac
*,,0.05,
conv1,,,2.0e-7
conv2,16,0.06,
conv2,32,0.10,
conv2,64,0.19,
```

A layer's cost is `ms_per_mac` times its MACs after shrinking, or, where
`units` and `ms` are given (its time at those output unit counts, with all of
its inputs), interpolated linearly in its unit count (held at the ends) and
scaled by the share of its input channels kept. Layers the table does not name
cost `default_ms_per_mac` per MAC (0 if it is not given); `fixed_ms` is what
does not scale with the layers (the call, the input copy).
"""

import csv
import io
import json
import math
import os
import statistics
import time

import numpy as np

from tf_lottery.files import write_atomically
from tf_lottery.validators import check_fraction
from tf_lottery.validators import check_int
from tf_lottery.validators import check_number
from tf_lottery.validators import fail


def _non_negative(value, argument):
    return check_number(value, argument, meaning="milliseconds")


def _layer_cost(name, entry):
    """A table entry, checked: `{"ms_per_mac": x}` or `{"units": [...], "ms": [...]}`."""
    argument = f"layers[{name!r}]"
    if not isinstance(entry, dict) or not (set(entry) & {"ms_per_mac", "units"}):
        fail(argument, 'a dict with "ms_per_mac", or "units" and "ms"', entry)
    if "ms_per_mac" in entry:
        return {"ms_per_mac": _non_negative(entry["ms_per_mac"], f"{argument}['ms_per_mac']")}
    units, ms = entry.get("units"), entry.get("ms")
    if (
        not isinstance(units, (list, tuple))
        or not isinstance(ms, (list, tuple))
        or len(units) != len(ms)
        or not units
        or any(isinstance(u, bool) or not isinstance(u, int) or u < 1 for u in units)
        or list(units) != sorted(set(units))
    ):
        fail(
            argument,
            '"units" (increasing positive unit counts) and "ms" (one time each), of one length',
            entry,
        )
    return {
        "units": [int(u) for u in units],
        "ms": [_non_negative(m, f"{argument}['ms']") for m in ms],
    }


class LatencyTable:
    """Per-layer latency costs measured on a device, to predict a shrunk model's latency.

    The format is in this module's docstring; `LatencyTable.load(path)` reads it
    from JSON or CSV.

    Args:
        layers: Dict from layer name to its cost: `{"ms_per_mac": x}`, or
            `{"units": [u1, u2, ...], "ms": [t1, t2, ...]}` (its time at those
            output unit counts).
        fixed_ms: Milliseconds that do not scale with any layer. Defaults to `0.0`.
        default_ms_per_mac: Cost per MAC of the layers `layers` does not name.
            Defaults to `0.0`.
        device: What the table was measured on, for reports. Defaults to `""`.

    Example:

    ```python
    table = tf_lottery.LatencyTable.load("pixel7.json")
    tf_lottery.prune(model, tf_lottery.UnitNorm(round_to=8),
                     target=tf_lottery.Target(latency=0.5, table=table))
    ```
    """

    def __init__(self, layers, *, fixed_ms=0.0, default_ms_per_mac=0.0, device=""):
        if not isinstance(layers, dict):
            fail("layers", "a dict from layer name to its cost", layers)
        self.layers = {str(name): _layer_cost(name, entry) for name, entry in layers.items()}
        self.fixed_ms = _non_negative(fixed_ms, "fixed_ms")
        self.default_ms_per_mac = _non_negative(default_ms_per_mac, "default_ms_per_mac")
        if not isinstance(device, str):
            fail("device", "a string saying what the table was measured on", device)
        self.device = device

    @classmethod
    def load(cls, path):
        """Reads a table from a `.json` or `.csv` file (the format in the module docstring)."""
        path = os.fspath(path)
        with open(path, encoding="utf-8") as file:
            text = file.read()
        if path.endswith(".json"):
            try:
                config = json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} is not valid JSON: {error}") from error
            if not isinstance(config, dict) or "layers" not in config:
                raise ValueError(
                    f'{path} holds no latency table: expected a JSON object with "layers". '
                    "See tf_lottery.export.latency for the format."
                )
            return cls(**config)
        if path.endswith(".csv"):
            return cls._from_csv(text, path)
        raise ValueError(f"Expected path to end in .json or .csv. Received: path={path!r}")

    @classmethod
    def _from_csv(cls, text, path):
        rows = list(csv.DictReader(io.StringIO(text)))
        if not rows or "layer" not in rows[0]:
            raise ValueError(
                f"{path} holds no latency table: expected a header 'layer,units,ms,ms_per_mac'."
            )
        layers, fixed = {}, 0.0
        for line, row in enumerate(rows, start=2):
            name = (row.get("layer") or "").strip()
            cell = {k: (row.get(k) or "").strip() for k in ("units", "ms", "ms_per_mac")}
            try:
                if name == "*":
                    fixed = float(cell["ms"])
                elif cell["ms_per_mac"]:
                    layers[name] = {"ms_per_mac": float(cell["ms_per_mac"])}
                else:
                    entry = layers.setdefault(name, {"units": [], "ms": []})
                    entry["units"].append(int(cell["units"]))
                    entry["ms"].append(float(cell["ms"]))
            except (ValueError, KeyError, AttributeError) as error:
                raise ValueError(
                    f"{path}, line {line}: expected a unit count and milliseconds, or "
                    f"ms_per_mac. Received: {dict(row)!r}"
                ) from error
        return cls(layers, fixed_ms=fixed)

    def save(self, path):
        """Writes the table as JSON (atomically)."""
        write_atomically(os.fspath(path), json.dumps(self.get_config(), indent=2))

    def get_config(self):
        return {
            "layers": self.layers,
            "fixed_ms": self.fixed_ms,
            "default_ms_per_mac": self.default_ms_per_mac,
            "device": self.device,
        }

    def predict(self, report):
        """Milliseconds of the model `report` (a `ShrinkReport`) describes, after shrinking."""
        total = self.fixed_ms
        for row in report.layers:
            entry = self.layers.get(row.layer)
            if entry is None:
                total += self.default_ms_per_mac * row.macs_after
            elif "ms_per_mac" in entry:
                total += entry["ms_per_mac"] * row.macs_after
            else:
                ms = float(np.interp(row.units_after, entry["units"], entry["ms"]))
                # The points are times with every input channel; fewer inputs cost less.
                full = row.macs_before * row.units_after / max(row.units_before, 1)
                total += ms * (row.macs_after / full if full else 1.0)
        return total

    def __repr__(self):
        return f"LatencyTable({len(self.layers)} layers, device={self.device!r})"


def median_interval(values, level=0.95):
    """The median of `values` and a distribution-free `level` interval for it.

    The interval is [x_(k), x_(n+1-k)] of the sorted values, with the largest k
    whose binomial coverage is at least `level`; with too few values for that
    (fewer than 6 at 95%) its ends are NaN.

    Returns:
        `(median, low, high)`, floats.
    """
    values = sorted(values)
    n = len(values)
    k = 0
    while 1 - 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n >= level:
        k += 1
    if k == 0:
        return float(np.median(values)), float("nan"), float("nan")
    return float(np.median(values)), float(values[k - 1]), float(values[n - k])


class _Loaded:
    """One model converted to float32 .tflite, loaded in LiteRT at batch 1, inputs set."""

    def __init__(self, model, threads):
        from tf_lottery.export import litert
        from tf_lottery.export.convert import convert

        content, _ = convert(model, None, False, None)
        self.interpreter = litert.load(content, num_threads=threads)
        for detail in self.interpreter.get_input_details():
            self.interpreter.resize_tensor_input(detail["index"], [1, *detail["shape"][1:]])
        self.interpreter.allocate_tensors()
        rng = np.random.default_rng(0)
        for detail in self.interpreter.get_input_details():
            sample = rng.random(detail["shape"]).astype(detail["dtype"])
            self.interpreter.set_tensor(detail["index"], sample)

    def warm(self, invokes):
        """Calls it a few times untimed, as many as a fifth of a timing (at least 10)."""
        for _ in range(max(10, invokes // 5)):
            self.interpreter.invoke()

    def time(self, invokes):
        """The median seconds of `invokes` calls."""
        each = []
        for _ in range(invokes):
            start = time.perf_counter()
            self.interpreter.invoke()
            each.append(time.perf_counter() - start)
        return statistics.median(each)


class LatencyMeter:
    """Times models in LiteRT against one reference model, alternately.

    Two timings of the same file on a shared machine differ by 10-20% at a
    tenth of a millisecond, so the latency of a shrunk model measured alone
    and compared with the dense model measured earlier is that noisy too. A
    meter keeps the reference loaded and times the candidate and the reference
    in alternating pairs (A B B A ...): load that changes over seconds slows
    both alike, and the ratio of each pair's medians cancels it. Pairs are
    added until the distribution-free 95% interval of the median ratio is
    within `precision` of it, or `max_pairs` are taken.

    Args:
        reference: A plain Keras model (the dense one), TensorFlow backend.
        threads: LiteRT threads. Defaults to `1`.
        invokes: Calls per timing; a timing is their median. Defaults to `50`.
        precision: The relative half-width of the ratio's 95% interval at which
            timing stops. Defaults to `0.02`.
        max_pairs: The most pairs per comparison. Defaults to `60`.

    Example:

    ```python
    meter = tf_lottery.LatencyMeter(tf_lottery.strip(model))
    ratio = meter.ratio(tf_lottery.shrink(model))   # 0.52: about twice as fast
    print(meter.ms(), meter.last)                   # the reference's ms; the ratio's interval
    ```
    """

    min_pairs = 6  # the fewest that give a 95% interval

    def __init__(self, reference, *, threads=1, invokes=50, precision=0.02, max_pairs=60):
        self.threads = check_int(threads, "threads", minimum=1)
        self.invokes = check_int(invokes, "invokes", minimum=1)
        self.max_pairs = check_int(max_pairs, "max_pairs", minimum=self.min_pairs)
        self.precision = check_fraction(
            precision, "precision", meaning="the ratio's relative precision, 0.02: 2%"
        )
        self._reference = _Loaded(reference, self.threads)
        self._reference.warm(self.invokes)
        self.last = None

    def ms(self, repeats=5):
        """The reference's milliseconds per call: the median of `repeats` timings."""
        return statistics.median(self._reference.time(self.invokes) for _ in range(repeats)) * 1e3

    def ratio(self, model):
        """The latency of `model` over the reference's, timed in alternating pairs.

        Returns:
            The median of the pairs' ratios, a float. `self.last` then holds
            `(median, low, high, pairs)`: its 95% interval and how many pairs.
        """
        candidate = _Loaded(model, self.threads)
        candidate.warm(self.invokes)
        ratios = []
        while True:
            if len(ratios) % 2 == 0:
                a, b = candidate.time(self.invokes), self._reference.time(self.invokes)
            else:
                b, a = self._reference.time(self.invokes), candidate.time(self.invokes)
            ratios.append(a / b)
            if len(ratios) >= self.min_pairs:
                median, low, high = median_interval(ratios)
                if max(median - low, high - median) <= self.precision * median:
                    break
                if len(ratios) >= self.max_pairs:
                    break
        self.last = (median, low, high, len(ratios))
        return median


def litert_latency(model, *, threads=1, repeats=5, invokes=50):
    """Milliseconds per call of `model` in LiteRT on this machine: float32, batch 1.

    The model is converted with TensorFlow's converter (as `export_tflite` does,
    without shrinking or sparse encoding), warmed up, and timed: the median over
    `repeats` of each repeat's median of `invokes` calls. To compare two models,
    `LatencyMeter` times them alternately, which is far less noisy than two
    separate calls of this.

    Args:
        model: A plain Keras model (shrunk or not), TensorFlow backend.
        threads: LiteRT threads. Defaults to `1`.
        repeats: Timed repeats. Defaults to `5`.
        invokes: Calls per repeat. Defaults to `50`.

    Returns:
        The latency in milliseconds, a float.
    """
    threads = check_int(threads, "threads", minimum=1)
    repeats = check_int(repeats, "repeats", minimum=1)
    invokes = check_int(invokes, "invokes", minimum=1)
    loaded = _Loaded(model, threads)
    loaded.warm(invokes)
    return statistics.median(loaded.time(invokes) for _ in range(repeats)) * 1000.0

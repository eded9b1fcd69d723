"""Where a lottery experiment keeps its files: the on-disk layout, in one place.

A run with one seed (`find_winning_ticket(..., seed=s)`) is one folder:

    out_dir/
      settings.json              the run's settings and layers, written once; "format": 2
      initial.npz                θ0, shared by the ticket and the controls that start from it
      history.json, history.csv, summary.csv
                                 the LotteryHistory, gathered from the round folders
      round_N/                   the ticket's round N
        masks.npz                one boolean mask per pruned weight ("layer/weight")
        trained.npz              the weights after training (masked, compressed)
        report.json              per-layer sparsity, thresholds, metrics per epoch
        instability.json         with instability_points: the linear interpolation
                                 between this round and a copy trained on another data order
        rewind_point.npz         round 0 only, with rewind=k: weights after k epochs
        start.weights.h5, trained.weights.h5
                                 with keep_weights="full" only: every variable of the
                                 wrapped model in Keras' format, for model.load_weights
      <control>/round_N/         each control ("reinit", "random_prune", "snip", ...),
                                 same files

A sweep over seeds (`seeds=(0, 1, 2)`) keeps one such run per seed:

    out_dir/
      sweep.json                 the settings every seed shares, written once
      history.json, history.csv  every finished round of every seed, one row each
      summary.csv                mean, std, min, max and count across seeds, per arm and round
      seed_S/                    the run of seed S, laid out as above

The unit of work is a seed's folder: processes may run different seeds into the
same out_dir at once. Within a seed the ticket's rounds form a chain (round N
prunes round N-1) and a control's round N needs only the ticket's round N.

The `.npz` files hold numpy arrays compressed: masks, and each model weight
except masks and the wrappers' θ0 and rewind-point copies (those come from
initial.npz and rewind_point.npz), in the order of `model.weights`. A round's
start weights are not stored: they are θ0 (or the rewind point, or a seeded
reinitialization) times its masks. Layers are matched by position, so names in
the files are those of the run's first model (see `tf_lottery.experiments.artifacts`).

A round's folder is written under a temporary name of its own process
(`round_N.partial-<random>`) and renamed when complete, so a folder that exists
is a finished round: resuming skips it, and two processes never write into the
same folder. Files written once for a run (settings, θ0) are created only if
absent; a process that finds one uses it. history.json and the like are derived
from the round folders and can always be written again (`collect_history`).
"""

import json
import os
import uuid

TICKET = "ticket"

# The version of this layout, in settings.json. Format 1 (no "format" entry) kept
# full Keras weight files per round and keyed masks by the layers' own names.
FORMAT = 2


class RunPaths:
    """The paths of one experiment rooted at `out_dir`."""

    def __init__(self, out_dir):
        self.root = os.fspath(out_dir)

    @property
    def settings(self):
        return os.path.join(self.root, "settings.json")

    @property
    def initial_weights(self):
        return os.path.join(self.root, "initial.npz")

    @property
    def history_json(self):
        return os.path.join(self.root, "history.json")

    @property
    def history_csv(self):
        return os.path.join(self.root, "history.csv")

    def round_dir(self, arm, round_index):
        name = f"round_{round_index}"
        return (
            os.path.join(self.root, name) if arm == TICKET else os.path.join(self.root, arm, name)
        )

    def partial_dir(self, arm, round_index):
        """A new temporary folder name for the round, unique to this call."""
        return f"{self.round_dir(arm, round_index)}.partial-{uuid.uuid4().hex[:12]}"

    @property
    def summary_csv(self):
        return os.path.join(self.root, "summary.csv")

    @property
    def sweep_settings(self):
        return os.path.join(self.root, "sweep.json")

    def seed_dir(self, seed):
        return os.path.join(self.root, f"seed_{seed}")

    def seeds(self):
        """The seeds that have a folder here, in increasing order."""
        if not os.path.isdir(self.root):
            return []
        names = (n for n in os.listdir(self.root) if n.startswith("seed_"))
        return sorted(int(n[5:]) for n in names if n[5:].isdigit())

    def read_settings(self):
        """The run's saved settings, or `None` where there is no run yet.

        Raises:
            ValueError: if the run was written in another layout format.
        """
        return self._read(self.settings)

    def read_sweep_settings(self):
        """The settings shared by a sweep's seeds, or `None` where there is no sweep."""
        return self._read(self.sweep_settings)

    def _read(self, path):
        if not os.path.exists(path):
            return None
        with open(path) as file:
            settings = json.load(file)
        found = settings.get("format", 1)
        if found != FORMAT:
            raise ValueError(
                f"out_dir {self.root!r} holds a lottery run in on-disk format {found}; this "
                f"version of tf_lottery reads format {FORMAT}. Use a new out_dir, or load that "
                "run with the tf_lottery version that wrote it."
            )
        return settings

    @staticmethod
    def masks(folder):
        return os.path.join(folder, "masks.npz")

    @staticmethod
    def trained_weights(folder):
        return os.path.join(folder, "trained.npz")

    @staticmethod
    def report(folder):
        return os.path.join(folder, "report.json")

    @staticmethod
    def instability(folder):
        return os.path.join(folder, "instability.json")

    @staticmethod
    def rewind_point(folder):
        return os.path.join(folder, "rewind_point.npz")

    @staticmethod
    def keras_start_weights(folder):
        return os.path.join(folder, "start.weights.h5")

    @staticmethod
    def keras_trained_weights(folder):
        return os.path.join(folder, "trained.weights.h5")

"""Where a lottery experiment keeps its files: the on-disk layout, in one place.

    out_dir/
      settings.json              the run's settings and layers, written once; "format": 2
      initial.npz                θ0, shared by the ticket and random_prune arms
      history.json, history.csv  the LotteryHistory, rewritten after each round
      round_N/                   the ticket's round N
        masks.npz                one boolean mask per pruned weight ("layer/weight")
        trained.npz              the weights after training (masked, compressed)
        report.json              per-layer sparsity, thresholds, metrics per epoch
        rewind_point.npz         round 0 only, with rewind=k: weights after k epochs
        start.weights.h5, trained.weights.h5
                                 with keep_weights="full" only: every variable of the
                                 wrapped model in Keras' format, for model.load_weights
      reinit/round_N/, random_prune/round_N/   the controls, same files

The `.npz` files hold numpy arrays compressed: masks, and each model weight
except masks and the wrappers' θ0 and rewind-point copies (those come from
initial.npz and rewind_point.npz), in the order of `model.weights`. A round's
start weights are not stored: they are θ0 (or the rewind point, or a seeded
reinitialization) times its masks. Layers are matched by position, so names in
the files are those of the run's first model (see `tf_lottery.artifacts`).

A round's folder is written under a temporary name and renamed when complete, so
a folder that exists is a finished round: resuming skips it.
"""

import json
import os

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
        return self.round_dir(arm, round_index) + ".partial"

    def read_settings(self):
        """The run's saved settings, or `None` where there is no run yet.

        Raises:
            ValueError: if the run was written in another layout format.
        """
        if not os.path.exists(self.settings):
            return None
        with open(self.settings) as file:
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
    def rewind_point(folder):
        return os.path.join(folder, "rewind_point.npz")

    @staticmethod
    def keras_start_weights(folder):
        return os.path.join(folder, "start.weights.h5")

    @staticmethod
    def keras_trained_weights(folder):
        return os.path.join(folder, "trained.weights.h5")

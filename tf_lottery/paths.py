"""Where a lottery experiment keeps its files: the on-disk layout, in one place.

    out_dir/
      settings.json              the run's settings, written once
      initial.weights.h5         θ0 of the wrapped model (shared by all rounds)
      history.json, history.csv  the LotteryHistory, rewritten after each round
      round_N/                   the ticket's round N
        masks.npz                one 0/1 mask per pruned weight ("layer/weight")
        start.weights.h5         the weights training started from (the rewind)
        trained.weights.h5       the weights after training
        report.json              per-layer sparsity, thresholds, metrics per epoch
        rewind_point.weights.h5  round 0 only, with rewind=k: weights after k epochs
      reinit/round_N/, random_prune/round_N/   the controls, same files

A round's folder is written under a temporary name and renamed when complete, so
a folder that exists is a finished round: resuming skips it.
"""

import os

TICKET = "ticket"


class RunPaths:
    """The paths of one experiment rooted at `out_dir`."""

    def __init__(self, out_dir):
        self.root = os.fspath(out_dir)

    @property
    def settings(self):
        return os.path.join(self.root, "settings.json")

    @property
    def initial_weights(self):
        return os.path.join(self.root, "initial.weights.h5")

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

    @staticmethod
    def masks(folder):
        return os.path.join(folder, "masks.npz")

    @staticmethod
    def start_weights(folder):
        return os.path.join(folder, "start.weights.h5")

    @staticmethod
    def trained_weights(folder):
        return os.path.join(folder, "trained.weights.h5")

    @staticmethod
    def report(folder):
        return os.path.join(folder, "report.json")

    @staticmethod
    def rewind_point(folder):
        return os.path.join(folder, "rewind_point.weights.h5")

"""Lottery-ticket experiments: one training per round, controls, seeds, artifacts, resume.

`find_winning_ticket` runs the experiment the way open_lth does: round 0 trains
the dense network; each later round prunes the previous round's trained weights,
rewinds the survivors and trains again. Controls (see `tf_lottery.experiments.controls`)
train beside the ticket from the same seed, each round at the ticket's sparsity
of that round. With `seeds=(...)` the experiment runs once per seed, each in a
folder of its own, and the history summarizes the seeds.

Every round is kept on disk (see `tf_lottery.experiments.paths`, which also says what a unit
of work is). A run started again with the same `out_dir` skips the rounds it
already finished, and processes may run different seeds into one `out_dir` at
the same time; `collect_history` gathers whatever has finished.
"""

import dataclasses
import json
import os

from tf_lottery.experiments.controls import arm_names
from tf_lottery.experiments.controls import name_of
from tf_lottery.experiments.history import LotteryHistory
from tf_lottery.experiments.history import RoundResult
from tf_lottery.experiments.history import plot_history  # noqa: F401  (tf_lottery.experiments.lottery.plot_history)
from tf_lottery.experiments.paths import TICKET
from tf_lottery.experiments.paths import RunPaths
from tf_lottery.experiments.run_config import KEEP_WEIGHTS  # noqa: F401  (tf_lottery.experiments.lottery.KEEP_WEIGHTS)
from tf_lottery.experiments.run_config import RunConfig
from tf_lottery.experiments.seed_run import SeedRun
from tf_lottery.validators import check_int


def _trainings(rounds, controls):
    """Every training of a seed's run, as (arm, round), in an order that respects
    what each needs: the ticket's round N needs its round N - 1, and a control's
    round N the ticket's round N."""
    yield TICKET, 0
    for round_index in range(1, rounds + 1):
        yield TICKET, round_index
        for arm in controls:
            yield arm, round_index


def _finished_rounds(run):
    """The report.json of every finished round of a run folder, by arm then round."""
    settings = run.read_settings()
    if settings is None:
        return []
    reports = []
    for arm in [TICKET, *arm_names(settings["controls"])]:
        parent = os.path.dirname(run.round_dir(arm, 0))
        names = os.listdir(parent) if os.path.isdir(parent) else []
        rounds = sorted(int(n[6:]) for n in names if n.startswith("round_") and n[6:].isdigit())
        reports += [RunPaths.report(run.round_dir(arm, r)) for r in rounds]
    return reports


def _runs(paths):
    """The run folders under `out_dir`: one per seed of a sweep, or the run itself."""
    if paths.read_sweep_settings() is not None:
        return [RunPaths(paths.seed_dir(seed)) for seed in paths.seeds()]
    return [paths] if paths.read_settings() is not None else []


def _history(reports):
    rows = []
    for path in reports:
        with open(path) as file:
            report = json.load(file)
        fields = {f.name: f for f in dataclasses.fields(RoundResult)}
        rows.append(
            RoundResult(**{name: report.get(name, f.default) for name, f in fields.items()})
        )
    arms = list(dict.fromkeys(r.arm for r in rows))
    seeds = list(dict.fromkeys(r.seed for r in rows))
    rows.sort(key=lambda r: (seeds.index(r.seed), r.round, r.arm != TICKET, arms.index(r.arm)))
    return LotteryHistory(rows)


def collect_history(out_dir):
    """Gathers every finished round under `out_dir` into one `LotteryHistory`.

    Reads the round folders of a run, or of every seed of a sweep, including
    seeds that other processes ran or are still running, and writes
    history.json, history.csv (one row per round, arm and seed) and summary.csv
    (mean, std, min, max and count across seeds) in `out_dir`. The files are
    derived from the round folders and can be written again at any time; when
    several processes finish at once, the last one to write sees every round.

    Args:
        out_dir: The `out_dir` given to `find_winning_ticket`.

    Returns:
        The `LotteryHistory`.

    Example:

    ```python
    history = tf_lottery.collect_history("runs/lenet_sweep")
    print(history)                  # mean ± std across the seeds finished so far
    ```
    """
    paths = RunPaths(out_dir)
    runs = _runs(paths)
    if not runs:
        raise ValueError(
            f"No lottery run in out_dir={os.fspath(out_dir)!r}: it has neither settings.json "
            "nor sweep.json. Pass the out_dir given to find_winning_ticket."
        )
    while True:
        reports = [r for run in runs for r in _finished_rounds(run)]
        history = _history(reports)
        history.to_json(paths.history_json)
        history.to_csv(paths.history_csv)
        history.to_csv(paths.summary_csv, summary=True)
        # A round that finished meanwhile may be missing from what was just
        # written: write again, so that the last writer's files hold everything.
        runs = _runs(paths)
        if [r for run in runs for r in _finished_rounds(run)] == reports:
            return history


def _check_seeds(seeds, seed):
    values = tuple(seeds) if isinstance(seeds, (tuple, list, range)) else None
    if (
        not values
        or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in values)
        or len(set(values)) != len(values)
    ):
        raise ValueError(
            "Expected seeds to be distinct non-negative integers, one run each, e.g. "
            f"seeds=(0, 1, 2). Received: seeds={seeds!r}"
        )
    if seed != 0:
        raise ValueError(
            "Pass seed for a run with one seed or seeds for several, not both. "
            f"Received: seed={seed!r}, seeds={seeds!r}"
        )
    return values


def _check_arms(arms, controls):
    """The arms a call trains: all of them by default, else the names given."""
    names = [TICKET, *(name_of(c) for c in controls)]
    if arms is None:
        return names
    arms = [arms] if isinstance(arms, str) else list(arms)
    if not arms or any(a not in names for a in arms):
        raise ValueError(
            f"Expected arms to name some of this run's arms, {names}. Received: arms={arms!r}"
        )
    return arms


def _units(paths, config, seed, seeds):
    """(seed, RunPaths, prefix for printing) of each seed's run: `out_dir` itself for
    one seed, `out_dir/seed_<s>` for each of `seeds` (after checking the sweep's settings)."""
    if seeds is None:
        if paths.read_sweep_settings() is not None:
            raise ValueError(
                f"out_dir {paths.root!r} holds a sweep over seeds (sweep.json). Pass "
                "seeds=(...) to run or extend it, or a new out_dir for a run with one seed."
            )
        return [(seed, paths, "")]
    if paths.read_settings() is not None:
        raise ValueError(
            f"out_dir {paths.root!r} holds a run with one seed (settings.json), not a "
            "sweep over seeds. Use a new out_dir for seeds=(...)."
        )
    config.claim(paths)
    return [(s, RunPaths(paths.seed_dir(s)), f"[seed {s}] ") for s in seeds]


def _print_round(row, prefix, resumed):
    test = "" if row.test_accuracy is None else f", test acc {row.test_accuracy:.2%}"
    barrier = "" if row.error_barrier is None else f", error barrier {row.error_barrier:.2%}"
    print(
        f"{prefix}[{row.arm}] round {row.round}: {row.remaining:.1%} of weights remain, "
        f"best val acc {row.best_val_accuracy:.2%}{test} (early stop epoch "
        f"{row.early_stop_epoch}){barrier}, {row.seconds:.1f} s"
        + (" (finished earlier, loaded from disk)" if resumed else ""),
        flush=True,
    )


def _run_seed(run, rounds, arms, prefix):
    """Runs the trainings of one seed's `arms` that are not finished yet.

    A control's round whose ticket round is not finished (by another process)
    is left for a later call.
    """
    paths = run.paths
    waiting = []
    for arm, round_index in _trainings(rounds, list(run.config.arms)):
        if arm not in arms:
            continue
        if arm == TICKET and round_index > 0:
            reached = run.reached(round_index - 1)
            if reached is not None and reached.meets:
                if run.config.verbose:
                    print(
                        f"{prefix}[ticket] round {round_index - 1} meets the target, so the run "
                        f"stops there: {reached}",
                        flush=True,
                    )
                break
        if arm != TICKET and not os.path.isdir(paths.round_dir(TICKET, round_index)):
            waiting.append(f"{arm} round {round_index}")
            continue
        resumed = os.path.isdir(paths.round_dir(arm, round_index))
        if not resumed:
            run.run_round(arm, round_index)
        history = collect_history(paths.root)
        if run.config.verbose:
            row = next(r for r in history.rows if (r.arm, r.round) == (arm, round_index))
            _print_round(row, prefix, resumed)
    if waiting and run.config.verbose:
        print(
            f"{prefix}Not started, as their ticket rounds are not finished yet: "
            f"{', '.join(waiting)}. Run again once they are.",
            flush=True,
        )


def find_winning_ticket(
    build_model,
    train_data,
    *,
    validation_data,
    test_data=None,
    criterion=None,
    rounds,
    epochs_per_round,
    rewind="init",
    controls=(),
    out_dir,
    seed=0,
    seeds=None,
    instability_points=None,
    target=None,
    arms=None,
    compile_kwargs=None,
    fit_kwargs=None,
    keep_weights="compressed",
    verbose=1,
):
    """Runs iterative magnitude pruning with rewinding, one training per round.

    Round 0 trains the dense network from θ0. Each later round prunes the
    previous round's trained weights with `criterion`, resets the survivors
    (to θ0 with `rewind="init"`, to round 0's weights after `k` epochs with
    `rewind=k`, or not at all with `rewind=None`) and trains `epochs_per_round`
    epochs with a fresh optimizer. Controls use the same seed and epochs, and
    each of their rounds the ticket's sparsity of that round.

    Args:
        build_model: A function returning a Keras model, compiled or not (then
            pass `compile_kwargs`). It may contain `PruneWrapper`s; otherwise it
            is wrapped with `tf_lottery.wrap`. It must return the same
            architecture on every call (layers are matched by position, so it
            need not name them); a model of another architecture is refused.
        train_data: `(x, y)` arrays or a `tf.data.Dataset` of batches.
        validation_data: `(x, y)` or a dataset; its loss picks the early-stop
            epoch and its accuracy the best validation accuracy.
        test_data: Optional `(x, y)` or dataset, evaluated after every epoch.
        criterion: A criterion; defaults to `PruneFraction(0.2)` (20% per round,
            10% for the output layer).
        rounds: Number of pruning rounds after the dense round.
        epochs_per_round: Training epochs in every round.
        rewind: `"init"`, an epoch count `k < epochs_per_round`, or `None`.
            Defaults to `"init"`.
        controls: Arms to train beside the ticket (see `tf_lottery.experiments.controls`):
            `"reinit"` (the ticket's masks, new random weights), `"random_prune"`
            (random masks, the ticket's per-layer sparsity), `"random_global"`
            and `"random_even"` (random masks, the ticket's overall sparsity,
            spread over all weights at once or equally over the layers), and
            pruning-at-initialization criteria such as `tf_lottery.SNIP(data=...)`,
            `tf_lottery.SynFlow()` or `tf_lottery.GraSP(data=...)` (θ0 pruned to
            the ticket's overall sparsity, their own per-layer spread). Each at
            most once. Defaults to `()`.
        out_dir: Folder for the artifacts (see `tf_lottery.experiments.paths`). Started again
            with the same settings, the run skips finished rounds; with other
            settings it is refused. `rounds` may grow to extend a run, and
            `seeds` to add seeds.
        seed: Seed of initialization, data order and controls, for a run with
            one seed in `out_dir` itself. Defaults to `0`.
        seeds: Distinct non-negative integers: run the whole experiment once per
            seed, each in `out_dir/seed_<seed>/`, and summarize across seeds
            (mean, standard deviation, minimum, maximum and count per round; see
            `LotteryHistory.summary`). Other processes may run other seeds into
            the same `out_dir` at the same time. Use either `seed` or `seeds`.
            Defaults to `None`.
        instability_points: With an integer >= 3, every round also trains a
            second copy from the round's starting point (same masks, another
            data order) and records the error barrier along the straight line
            between the two networks at this many points (see
            `tf_lottery.experiments.instability`), in `RoundResult.error_barrier` and the
            round's instability.json. Doubles the training time. Defaults to
            `None`.
        target: A `tf_lottery.Target` (MACs, parameters or latency after
            `shrink`) with a unit criterion: each round prunes the criterion's
            rate until the next would pass the target, that round prunes as
            few units as meet it, and the run stops after the first round that
            meets it (`rounds` is then an upper bound). Defaults to `None`.
        arms: The arms this call trains, by name (`"ticket"` and control
            names); the others are left as they are. Processes can split one
            seed this way: the ticket's rounds form a chain, and a control's
            round N needs only the ticket's round N, so a call with the controls
            alone trains those whose ticket round is finished and leaves the
            rest for a later call. Not a setting: calls may differ in it.
            Defaults to `None`: the ticket and every control.
        compile_kwargs: Keyword arguments of `model.compile`, if `build_model`
            does not compile. Defaults to `None`.
        fit_kwargs: Extra keyword arguments of `model.fit`, e.g. `batch_size`.
            Defaults to `None`.
        keep_weights: `"compressed"` keeps, per round, the boolean masks and the
            trained weights in compressed `.npz` files (about 1 MB per round for
            LeNet-300-100, less as it gets sparser), enough for `load_round` and
            to resume. `"full"` also keeps each round's start and trained weights
            as Keras `.weights.h5` files (several MB each) for
            `model.load_weights`. It does not change results, so a run may be
            resumed with the other value. Defaults to `"compressed"`.
        verbose: `0` silent, `1` one line per round, `2` adds Keras' progress bar.
            Defaults to `1`.

    Returns:
        A `LotteryHistory` of every finished round in `out_dir` (of every seed,
        also those run by other processes), also saved as `out_dir/history.json`,
        `history.csv` and `summary.csv`.

    Example:

    ```python
    history = tf_lottery.find_winning_ticket(
        build_lenet, (x_train, y_train), validation_data=(x_val, y_val),
        test_data=(x_test, y_test), rounds=10, epochs_per_round=8,
        controls=["reinit", "random_prune"], seeds=(0, 1, 2), out_dir="runs/lenet",
        fit_kwargs={"batch_size": 60})
    print(history)                   # mean ± std across the three seeds
    tf_lottery.plot_history(history, "runs/lenet/lottery.png")
    ```
    """
    check_int(rounds, "rounds")
    check_int(seed, "seed")
    if not isinstance(out_dir, (str, os.PathLike)):
        raise ValueError(f"Expected out_dir to be a folder path. Received: out_dir={out_dir!r}")
    seeds = None if seeds is None else _check_seeds(seeds, seed)
    config = RunConfig(
        build_model,
        epochs_per_round,
        train_data=train_data,
        validation_data=validation_data,
        test_data=test_data,
        criterion=criterion,
        rewind=rewind,
        controls=controls,
        compile_kwargs=compile_kwargs,
        fit_kwargs=fit_kwargs,
        instability_points=instability_points,
        target=target,
        keep_weights=keep_weights,
        verbose=verbose,
    )
    arms = _check_arms(arms, config.controls)
    for run_seed, run_paths, prefix in _units(RunPaths(out_dir), config, seed, seeds):
        run = SeedRun(config, run_seed, run_paths)
        saved = config.claim(run_paths, run_seed, run.first_layers)
        run.layers = saved["layers"]
        _run_seed(run, rounds, arms, prefix)
        if seeds is not None:
            collect_history(out_dir)
    return collect_history(out_dir)


def load_round(build_model, out_dir, round_index, arm=TICKET, compile_kwargs=None, seed=None):
    """Rebuilds the trained model of one round from its artifacts.

    Args:
        build_model: The same function given to `find_winning_ticket`.
        out_dir: The experiment's folder.
        round_index: Which round.
        arm: `"ticket"` or a control's name, e.g. `"reinit"` or `"snip"`.
            Defaults to `"ticket"`.
        compile_kwargs: As given to `find_winning_ticket`, if any; to evaluate or
            train the model. Not needed for inference (`predict`, `sparsity`,
            export). Defaults to `None`.
        seed: Which seed of a sweep (`seeds=...`); not needed for a run with
            one seed. Defaults to `None`.

    Returns:
        The wrapped model with that round's masks and trained weights, and the
        arm's θ0 as its initial weights; compiled if `build_model` compiles it
        or `compile_kwargs` are given.

    Example:

    ```python
    model = tf_lottery.load_round(build_lenet, "runs/lenet", 7, seed=1)
    print(tf_lottery.sparsity(model))
    ```
    """
    paths = RunPaths(out_dir)
    if paths.read_sweep_settings() is not None:
        if seed not in paths.seeds():
            raise ValueError(
                f"out_dir {paths.root!r} holds a sweep over seeds {paths.seeds()}; pass one of "
                f"them. Received: seed={seed!r}"
            )
        paths = RunPaths(paths.seed_dir(seed))
    settings = paths.read_settings()
    folder = paths.round_dir(arm, round_index)
    if settings is None or not os.path.isdir(folder):
        raise ValueError(
            f"No finished round {round_index} of arm {arm!r} in {paths.root!r}. Pass the "
            "out_dir given to find_winning_ticket and a round it has finished."
        )
    if seed is not None and seed != settings["seed"]:
        raise ValueError(
            f"out_dir {paths.root!r} holds the run of seed {settings['seed']}. "
            f"Received: seed={seed!r}"
        )
    # With rewind=k the loaded model keeps θ0 and the rewind point (see SeedRun.new_model).
    config = RunConfig(
        build_model,
        settings["epochs_per_round"],
        rewind=settings.get("rewind"),
        compile_kwargs=compile_kwargs,
    )
    run = SeedRun(config, settings["seed"], paths, settings["layers"], caller="load_round")
    return run.trained_model(arm, round_index)

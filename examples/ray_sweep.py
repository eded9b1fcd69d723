"""Runs the seeds of a small lottery sweep in parallel with Ray, into one out_dir.

Each seed is one unit of work (`out_dir/seed_<s>/`, see `tf_lottery.experiments.paths`): a
Ray task calls `find_winning_ticket(..., seeds=(s,), out_dir=out_dir)`, and the
tasks share nothing but the folder. When they are done, `collect_history`
gathers every seed into one history, with mean, standard deviation and range
across seeds. Running it again skips what is finished; a task that died is
simply run again. The same pattern runs on a Ray cluster (`ray.init(address=...)`
and an out_dir every node mounts), a Slurm array or Kubernetes jobs: see the
README, "Running sweeps on a cluster".

    pip install ray
    python examples/ray_sweep.py                 # 3 seeds, 2 at a time, ~1 min on 2 CPUs
    python examples/ray_sweep.py --seeds=0,1,2,3,4 --rounds=8
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import mnist  # noqa: E402

flags.DEFINE_list("seeds", ["0", "1", "2"], "The seeds of the sweep, one Ray task each.")
flags.DEFINE_integer("rounds", 4, "Pruning rounds.")
flags.DEFINE_integer("epochs_per_round", 3, "Training epochs in each round.")
flags.DEFINE_float(
    "rate", 0.3, "Fraction of surviving weights pruned per round (output layer: half)."
)
flags.DEFINE_integer("num_cpus", 2, "CPUs Ray may use: tasks that run at once.")
flags.DEFINE_string(
    "out_dir",
    "runs/ray_sweep",
    "Folder for the sweep; each --data source gets its own subfolder.",
)
flags.adopt_module_key_flags(mnist)  # --help lists the shared data flags too
FLAGS = flags.FLAGS

EXAMPLES = os.path.dirname(os.path.abspath(__file__))


def run_seed(seed, out_dir, settings):
    """One Ray task: the whole lottery run of one seed. Returns its finished rounds."""
    import tf_lottery
    from models import classifier_compile_kwargs
    from models import lenet_300_100

    from mnist_data import load_mnist

    data = load_mnist(settings["data"], seed=settings["data_seed"])
    history = tf_lottery.find_winning_ticket(
        lenet_300_100,
        (data.train.x, data.train.y),
        validation_data=(data.validation.x, data.validation.y),
        test_data=(data.test.x, data.test.y),
        criterion=tf_lottery.PruneFraction(settings["rate"]),
        rounds=settings["rounds"],
        epochs_per_round=settings["epochs_per_round"],
        controls=["reinit"],
        seeds=(seed,),
        out_dir=out_dir,
        compile_kwargs=classifier_compile_kwargs(settings["learning_rate"]),
        fit_kwargs={"batch_size": settings["batch_size"]},
        verbose=0,
    )
    return len(history.arm("ticket", seed)) + len(history.arm("reinit", seed))


def main(argv):
    del argv
    try:
        import ray
    except ImportError:
        raise SystemExit("This example needs Ray: pip install ray") from None

    import tf_lottery

    data = mnist.load()  # once here, to say which data it is; each task loads its own
    out_dir = os.path.abspath(os.path.join(FLAGS.out_dir, data.name))
    settings = {
        "data": data.name,
        "data_seed": FLAGS.seed,
        "rate": FLAGS.rate,
        "rounds": FLAGS.rounds,
        "epochs_per_round": FLAGS.epochs_per_round,
        "learning_rate": FLAGS.learning_rate,
        "batch_size": FLAGS.batch_size,
    }
    # Tasks import `models` from this folder and tf_lottery from wherever it is.
    path = os.pathsep.join(p for p in (EXAMPLES, os.environ.get("PYTHONPATH")) if p)
    ray.init(
        num_cpus=FLAGS.num_cpus,
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "2"}},
    )
    task = ray.remote(num_cpus=1)(run_seed)
    seeds = [int(s) for s in FLAGS.seeds]
    pending = {task.remote(seed, out_dir, settings): seed for seed in seeds}
    while pending:
        done, _ = ray.wait(list(pending))
        seed = pending.pop(done[0])
        print(f"seed {seed}: {ray.get(done[0])} rounds finished", flush=True)
    ray.shutdown()
    history = tf_lottery.collect_history(out_dir)
    print(f"\n{history}")
    plot = os.path.join(out_dir, "lottery.png")
    tf_lottery.plot_history(history, plot)
    print(
        f"\nPlot: {plot}; per-seed rows: {os.path.join(out_dir, 'history.csv')}, summary: "
        f"{os.path.join(out_dir, 'summary.csv')}"
    )


if __name__ == "__main__":
    app.run(main)

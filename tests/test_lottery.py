"""find_winning_ticket: rounds on disk, controls, resume, history and plot."""

import dataclasses
import hashlib
import json
import os

import keras
import numpy as np
import pytest
from conftest import data
from conftest import mlp

import tf_lottery as tl
from tf_lottery.experiments import lottery
from tf_lottery.experiments.artifacts import _state_variables
from tf_lottery.experiments.artifacts import load_state
from tf_lottery.experiments.artifacts import save_arrays
from tf_lottery.experiments.paths import RunPaths
from tf_lottery.experiments.run_config import RunConfig

COMPILE = dict(
    optimizer="adam",
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)


def build():
    return mlp()


def run(
    out_dir,
    rounds=2,
    controls=("reinit", "random_prune"),
    builder=build,
    epochs=3,
    verbose=0,
    **kwargs,
):
    x, y = data(192)
    return tl.find_winning_ticket(
        builder,
        (x[:128], y[:128]),
        validation_data=(x[128:160], y[128:160]),
        test_data=(x[160:], y[160:]),
        criterion=tl.PruneFraction(0.5),
        rounds=rounds,
        epochs_per_round=epochs,
        controls=controls,
        out_dir=out_dir,
        compile_kwargs=COMPILE,
        fit_kwargs={"batch_size": 32},
        verbose=verbose,
        **kwargs,
    )


def masks(folder):
    with np.load(os.path.join(folder, "masks.npz")) as archive:
        return dict(archive)


def test_rounds_controls_and_artifacts(tmp_path):
    out = str(tmp_path / "run")
    history = run(out)
    assert [(r.arm, r.round) for r in history.rows] == [
        ("ticket", 0),
        ("ticket", 1),
        ("reinit", 1),
        ("random_prune", 1),
        ("ticket", 2),
        ("reinit", 2),
        ("random_prune", 2),
    ]
    ticket = history.arm("ticket")
    assert ticket[0].remaining == 1.0 and ticket[1].remaining < 0.6 and ticket[2].remaining < 0.35
    for r in (1, 2):
        t, rein, rand = (
            masks(os.path.join(out, p, f"round_{r}")) for p in ("", "reinit", "random_prune")
        )
        for key in t:
            np.testing.assert_array_equal(rein[key], t[key])  # reinit: the ticket's masks
            assert rand[key].sum() == t[key].sum()  # random: the ticket's per-layer counts
            assert not np.array_equal(rand[key], t[key])
    # A round's artifacts reload into the model that gave the recorded accuracy.
    model = lottery.load_round(build, out, 1, compile_kwargs=COMPILE)
    x, y = data(192)
    accuracy = model.evaluate(x[160:], y[160:], verbose=0, return_dict=True)["accuracy"]
    assert accuracy == pytest.approx(ticket[1].final_test_accuracy)
    # The early-stop epoch is the argmin of validation loss.
    report = json.load(open(os.path.join(out, "round_1", "report.json")))
    losses = [e["val_loss"] for e in report["epochs"]]
    assert report["early_stop_epoch"] == int(np.argmin(losses)) + 1
    assert report["test_accuracy"] == report["epochs"][int(np.argmin(losses))]["test_accuracy"]
    assert set(report["thresholds"]) == {"fc1/kernel", "out/kernel"}
    # History files.
    assert tl.LotteryHistory.from_json(os.path.join(out, "history.json")).rows == history.rows
    assert open(os.path.join(out, "history.csv")).readline().startswith("arm,round,remaining")
    assert "ticket" in str(history) and "random_prune" in str(history)


def test_rounds_keep_compressed_masks_and_weights_and_no_keras_files(tmp_path):
    out = tmp_path / "run"
    run(str(out), rounds=1, controls=("reinit",))
    assert sorted(p.name for p in (out / "round_1").iterdir()) == [
        "masks.npz",
        "report.json",
        "trained.npz",
    ]
    assert not list(out.rglob("*.h5"))
    assert all(m.dtype == bool for m in masks(out / "round_1").values())
    settings = json.loads((out / "settings.json").read_text())
    assert settings["format"] == 2
    assert [layer["name"] for layer in settings["layers"]] == ["fc1", "out"]


@pytest.mark.parametrize("rewind", ["init", 1])
def test_keep_weights_full_adds_keras_files_and_the_ticket_starts_rewound(tmp_path, rewind):
    out = str(tmp_path / "run")
    run(out, rounds=1, controls=("reinit",), keep_weights="full", rewind=rewind)
    model = lottery.load_round(build, out, 1, compile_kwargs=COMPILE)
    start = keras.models.clone_model(model)
    start.load_weights(os.path.join(out, "round_1", "start.weights.h5"))
    kernel, mask = start.layers[0].layer.kernel.numpy(), start.layers[0].masks["kernel"].numpy()
    theta0 = model.layers[0].initial_weights["kernel"].numpy()  # load_round restores θ0
    dense = lottery.load_round(build, out, 0, compile_kwargs=COMPILE).layers[0]
    if rewind == "init":
        np.testing.assert_array_equal(kernel, theta0 * mask)
    else:
        assert int(dense.rewind_epoch.numpy()) == 1
        rewind_point = {w.name: w.rewind_point for w in dense.saved_weights}["kernel"]
        np.testing.assert_array_equal(kernel, rewind_point.numpy() * mask)
        assert not np.allclose(kernel, theta0 * mask)
    start.load_weights(os.path.join(out, "reinit", "round_1", "start.weights.h5"))
    assert not np.allclose(start.layers[0].layer.kernel.numpy(), theta0 * mask)
    trained = keras.models.clone_model(model)
    trained.load_weights(os.path.join(out, "round_1", "trained.weights.h5"))
    for a, b in zip(trained.weights, model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def unnamed():
    return keras.Sequential([keras.Input((20,)), keras.layers.Dense(8), keras.layers.Dense(3)])


def _mlp_with_batchnorm():
    inputs = keras.Input((20,))
    x = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(16, name="fc1")(inputs))
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(keras.layers.ReLU()(x)))


def test_a_loaded_round_rewinds_batchnorm_to_the_rewind_point_too(tmp_path):
    out = str(tmp_path / "run")
    run(out, rounds=1, controls=(), builder=_mlp_with_batchnorm, epochs=2, rewind=1)
    model = lottery.load_round(_mlp_with_batchnorm, out, 1, compile_kwargs=COMPILE)
    bn = model.get_layer("rewind_bn").layer
    trained = bn.moving_mean.numpy()
    tl.rewind(model, "rewind_point")
    point = tl.wrap(_mlp_with_batchnorm())
    load_state(point, RunPaths.rewind_point(RunPaths(out).round_dir("ticket", 0)))
    np.testing.assert_array_equal(
        bn.moving_mean.numpy(), point.get_layer("rewind_bn").layer.moving_mean.numpy()
    )
    assert not np.allclose(bn.moving_mean.numpy(), trained)


def test_settings_json_is_byte_identical_to_that_of_runs_saved_before_run_config(tmp_path):
    # The SHA-256 of the settings.json that find_winning_ticket wrote for these
    # settings before RunConfig replaced _Experiment (commit 1029f8b): runs saved
    # then must keep resuming.
    out = tmp_path / "run"
    run(str(out), rounds=0, epochs=2, rewind=1, controls=("reinit",))
    text = (out / "settings.json").read_bytes()
    assert hashlib.sha256(text).hexdigest() == (
        "f0bbd55fc46b21bf62ee061bf049d68c87429fae23c8ccc87ec4fe8beca85996"
    ), text.decode()
    run(str(out), rounds=1, epochs=2, rewind=1, controls=("reinit",))  # resumes
    assert (out / "settings.json").read_bytes() == text


def test_run_config_is_frozen_documents_each_field_and_checks_its_arguments():
    config = RunConfig(build, 2, criterion=None, controls=["reinit"], fit_kwargs=None)
    assert config.criterion.get_config() == tl.PruneFraction(0.2).get_config()
    assert config.fit_kwargs == {} and list(config.arms) == ["reinit"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.rewind = None
    assert all(f.metadata["help"] for f in dataclasses.fields(RunConfig))
    with pytest.raises(ValueError, match="rewind=2 must be an epoch count"):
        RunConfig(build, 2, rewind=2)
    with pytest.raises(ValueError, match="keep_weights='all'"):
        RunConfig(build, 2, keep_weights="all")


def test_a_run_saved_before_batchnorm_had_a_rewind_point_still_rewinds_it(tmp_path):
    # Runs written before issue 18's bug 2 was fixed hold the rewind epoch in the
    # PruneWrappers only; the RewindWrapper around BatchNormalization reads -1.
    out = str(tmp_path / "run")
    run(out, rounds=0, controls=(), builder=_mlp_with_batchnorm, epochs=2, rewind=1)
    folder = RunPaths(out).round_dir("ticket", 0)
    fresh = tl.wrap(_mlp_with_batchnorm(), keep="both")
    index = [id(v) for v in _state_variables(fresh)].index(
        id(fresh.get_layer("rewind_bn").rewind_epoch)
    )
    for path in (RunPaths.rewind_point(folder), RunPaths.trained_weights(folder)):
        with np.load(path) as archive:
            arrays = dict(archive)
        arrays[str(index)] = np.array(-1, dtype="int32")
        save_arrays(path, arrays)
    model = lottery.load_round(_mlp_with_batchnorm, out, 0, compile_kwargs=COMPILE)
    tl.rewind(model, "rewind_point")
    load_state(fresh, RunPaths.rewind_point(folder))
    np.testing.assert_array_equal(
        model.get_layer("rewind_bn").layer.moving_mean.numpy(),
        fresh.get_layer("rewind_bn").layer.moving_mean.numpy(),
    )


@pytest.mark.slow  # end to end: runs and loads (~9 s on TensorFlow)
def test_a_builder_that_leaves_naming_to_keras_runs_and_loads(tmp_path):
    out = str(tmp_path / "run")
    history = run(out, builder=unnamed)
    first = {r: masks(os.path.join(out, f"round_{r}")) for r in range(3)}
    keys = list(first[0])
    assert len(keys) == 2
    x, y = data(192)
    for row in history.rows:
        folder = RunPaths(out).round_dir(row.arm, row.round)
        assert list(masks(folder)) == keys
        report = json.load(open(os.path.join(folder, "report.json")))
        assert list(report["thresholds"]) == keys
        assert [layer["layer"] for layer in report["sparsity"]["layers"]] == [
            k.split("/")[0] for k in keys
        ]
        model = lottery.load_round(unnamed, out, row.round, row.arm, compile_kwargs=COMPILE)
        accuracy = model.evaluate(x[160:], y[160:], verbose=0, return_dict=True)["accuracy"]
        assert accuracy == pytest.approx(row.final_test_accuracy)
        assert 1 - tl.sparsity(model).sparsity == pytest.approx(row.remaining)
    assert run(out, builder=unnamed).rows == history.rows  # resumes


def one_layer():
    return keras.Sequential([keras.Input((20,)), keras.layers.Dense(3)])


def test_a_builder_whose_architecture_changes_is_refused(tmp_path):
    calls = []

    def growing():
        calls.append(1)
        return mlp(hidden=8 + len(calls))

    with pytest.raises(ValueError, match="architecture.*layer 0 is Dense with weights"):
        run(str(tmp_path / "run"), builder=growing)
    out = str(tmp_path / "other")
    run(out, rounds=0, controls=())
    with pytest.raises(ValueError, match="1 prunable layers now, 2 in"):
        tl.load_round(one_layer, out, 0, compile_kwargs=COMPILE)


def test_a_run_in_an_older_layout_is_refused(tmp_path):
    out = tmp_path / "old"
    (out / "round_0").mkdir(parents=True)
    (out / "settings.json").write_text(json.dumps({"seed": 0, "epochs_per_round": 3}))
    with pytest.raises(ValueError, match=r"'.*old' holds a lottery run in on-disk format 1"):
        run(str(out), rounds=0, controls=())
    with pytest.raises(ValueError, match="format 1.*reads format 2.*new out_dir"):
        tl.load_round(build, str(out), 0, compile_kwargs=COMPILE)


@pytest.mark.slow  # end to end: two runs, one interrupted (~10 s on TensorFlow)
def test_an_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    whole = run(str(tmp_path / "whole"), controls=("reinit",))
    out = str(tmp_path / "broken")
    real_fit = lottery.SeedRun.fit
    calls = []

    def crash_in_round_two(self, model, round_index, *args, **kwargs):
        calls.append(round_index)
        if round_index == 2:
            raise KeyboardInterrupt("killed")
        return real_fit(self, model, round_index, *args, **kwargs)

    monkeypatch.setattr(lottery.SeedRun, "fit", crash_in_round_two)
    with pytest.raises(KeyboardInterrupt):
        run(out, controls=("reinit",))
    monkeypatch.undo()
    # The interrupted round leaves neither a round folder nor its temporary one.
    assert sorted(n for n in os.listdir(out) if n.startswith("round_")) == ["round_0", "round_1"]
    resumed = run(out, controls=("reinit",))
    for a, b in zip(whole.rows, resumed.rows):
        assert (a.arm, a.round, a.remaining, a.early_stop_epoch) == (
            b.arm,
            b.round,
            b.remaining,
            b.early_stop_epoch,
        )
        assert a.best_val_accuracy == pytest.approx(b.best_val_accuracy)
        assert a.final_test_accuracy == pytest.approx(b.final_test_accuracy)
    for r in range(3):
        for key, value in masks(os.path.join(tmp_path, "whole", f"round_{r}")).items():
            np.testing.assert_array_equal(value, masks(os.path.join(out, f"round_{r}"))[key])


def test_other_settings_in_the_same_out_dir_are_refused(tmp_path):
    out = str(tmp_path / "run")
    run(out, rounds=1, controls=())
    with pytest.raises(ValueError, match="epochs_per_round|criterion|seed"):
        run(out, rounds=1, controls=(), seed=3)
    extended = run(out, rounds=2, controls=())  # more rounds extend the run
    assert [r.round for r in extended.rows] == [0, 1, 2]


def test_plot_is_a_png(tmp_path):
    history = run(str(tmp_path / "run"), rounds=1, controls=("reinit",))
    path = str(tmp_path / "plot.png")
    tl.plot_history(history, path)
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(path).shape[0] > 100


def test_runner_bad_input(tmp_path):
    x, y = data()
    kwargs = dict(
        validation_data=(x, y),
        rounds=1,
        epochs_per_round=2,
        out_dir=str(tmp_path / "r"),
        compile_kwargs=COMPILE,
    )
    with pytest.raises(ValueError, match="controls"):
        tl.find_winning_ticket(build, (x, y), controls=("shuffle",), **kwargs)
    with pytest.raises(ValueError, match="rewind=5"):
        tl.find_winning_ticket(build, (x, y), rewind=5, **kwargs)
    with pytest.raises(ValueError, match="criterion"):
        tl.find_winning_ticket(build, (x, y), criterion="l1", **kwargs)
    with pytest.raises(ValueError, match="fit_kwargs"):
        tl.find_winning_ticket(build, (x, y), fit_kwargs={"epochs": 3}, **kwargs)
    kwargs["compile_kwargs"] = None
    with pytest.raises(ValueError, match="compiled model"):
        tl.find_winning_ticket(build, (x, y), **kwargs)


def test_tf_data_datasets_work_as_data(tmp_path):
    import tensorflow as tf

    x, y = data(192)
    train = tf.data.Dataset.from_tensor_slices((x[:128], y[:128])).batch(32)
    validation = tf.data.Dataset.from_tensor_slices((x[128:160], y[128:160])).batch(32)
    test = tf.data.Dataset.from_tensor_slices((x[160:], y[160:])).batch(32)
    history = tl.find_winning_ticket(
        build,
        train,
        validation_data=validation,
        test_data=test,
        rounds=1,
        epochs_per_round=2,
        out_dir=str(tmp_path / "run"),
        compile_kwargs=COMPILE,
        verbose=0,
    )
    assert [r.round for r in history.rows] == [0, 1]
    assert history.rows[1].test_accuracy is not None and history.rows[1].remaining < 0.85


@pytest.mark.slow  # end to end: a run per seed (~9 s on TensorFlow)
def test_seeds_run_one_folder_each_and_the_summary_is_across_them(tmp_path):
    out = tmp_path / "sweep"
    history = run(str(out), rounds=1, controls=("random_prune",), seeds=(0, 1))
    assert sorted(p.name for p in out.iterdir()) == [
        "history.csv",
        "history.json",
        "seed_0",
        "seed_1",
        "summary.csv",
        "sweep.json",
    ]
    assert "seed" not in json.loads((out / "sweep.json").read_text())
    for seed in (0, 1):
        folder = out / f"seed_{seed}"
        assert json.loads((folder / "settings.json").read_text())["seed"] == seed
        assert (folder / "round_1").is_dir() and (folder / "random_prune" / "round_1").is_dir()
    assert [(r.seed, r.arm, r.round) for r in history.rows] == [
        (s, arm, r)
        for s in (0, 1)
        for arm, r in [("ticket", 0), ("ticket", 1), ("random_prune", 1)]
    ]
    # Each seed draws its own θ0.
    first, second = (np.load(out / f"seed_{s}" / "initial.npz")["0"] for s in (0, 1))
    assert not np.allclose(first, second)
    # The summary is the hand computation over the seeds' own reports.
    for summary in history.summary():
        folders = [
            RunPaths(out / f"seed_{s}").round_dir(summary.arm, summary.round) for s in (0, 1)
        ]
        reports = [json.loads(open(os.path.join(f, "report.json")).read()) for f in folders]
        tests = [r["test_accuracy"] for r in reports]
        assert summary.count == 2
        assert summary.stats["test_accuracy"].mean == pytest.approx(np.mean(tests))
        assert summary.stats["test_accuracy"].std == pytest.approx(np.std(tests, ddof=1))
    on_disk = tl.LotteryHistory.from_json(out / "history.json")
    assert on_disk.rows == history.rows
    # Running again loads every round; one more seed adds a folder.
    assert run(str(out), rounds=1, controls=("random_prune",), seeds=(0, 1)).rows == history.rows
    more = run(str(out), rounds=1, controls=("random_prune",), seeds=(2,))
    assert more.seeds == [0, 1, 2] and [s.count for s in more.summary()] == [3, 3, 3]
    model = tl.load_round(build, str(out), 1, "random_prune", compile_kwargs=COMPILE, seed=1)
    x, y = data(192)
    accuracy = model.evaluate(x[160:], y[160:], verbose=0, return_dict=True)["accuracy"]
    row = next(r for r in history.rows if (r.seed, r.arm, r.round) == (1, "random_prune", 1))
    assert accuracy == pytest.approx(row.final_test_accuracy)
    with pytest.raises(ValueError, match=r"sweep over seeds \[0, 1, 2\]; pass one"):
        tl.load_round(build, str(out), 1, compile_kwargs=COMPILE)


@pytest.mark.parametrize("seeds", [(0, 0), (0, "1"), (), (1.0, 2), (True, 2), (-1, 2), "012", 3])
def test_seeds_that_are_not_distinct_integers_are_refused(tmp_path, seeds):
    with pytest.raises(ValueError, match=r"Expected seeds to be distinct non-negative integers"):
        run(str(tmp_path / "r"), seeds=seeds)
    assert not (tmp_path / "r").exists()


def test_a_sweep_and_a_run_with_one_seed_do_not_share_an_out_dir(tmp_path):
    with pytest.raises(ValueError, match="seed for a run with one seed or seeds"):
        run(str(tmp_path / "r"), seed=3, seeds=(1, 2))
    single = str(tmp_path / "single")
    run(single, rounds=0, controls=())
    with pytest.raises(ValueError, match="holds a run with one seed"):
        run(single, rounds=0, controls=(), seeds=(0,))
    sweep = str(tmp_path / "sweep")
    run(sweep, rounds=0, controls=(), seeds=(0,))
    with pytest.raises(ValueError, match="holds a sweep over seeds"):
        run(sweep, rounds=0, controls=())
    with pytest.raises(ValueError, match="other settings.*epochs_per_round"):
        run(sweep, rounds=0, controls=(), seeds=(5,), epochs=2)


def test_controls_at_the_tickets_overall_sparsity_choose_their_own_layers(tmp_path):
    x, y = data(192)
    snip = tl.SNIP(data=(x[:64], y[:64]))
    controls = (snip, tl.SynFlow(iterations=5), "random_global", "random_even")
    out = str(tmp_path / "run")
    history = run(out, rounds=1, controls=controls, epochs=1)
    assert history.arms == ["ticket", "snip", "synflow", "random_global", "random_even"]
    for r in (1,):
        ticket = masks(os.path.join(out, f"round_{r}"))
        kept = sum(int(m.sum()) for m in ticket.values())
        for arm in ("snip", "synflow", "random_global", "random_even"):
            control = masks(os.path.join(out, arm, f"round_{r}"))
            total = sum(int(m.sum()) for m in control.values())
            if arm == "random_even":  # the overall density in each tensor, rounded per tensor
                assert abs(total - kept) <= len(ticket)
                for m in control.values():
                    assert abs(m.mean() - kept / sum(t.size for t in ticket.values())) < 1 / m.size
            else:
                assert total == kept, arm
        snip_masks = masks(os.path.join(out, "snip", f"round_{r}"))
        assert any(snip_masks[k].sum() != ticket[k].sum() for k in ticket)  # its own spread
    rows = {(row.arm, row.round): row for row in history.rows}
    for arm in ("snip", "synflow", "random_global"):
        assert rows[(arm, 1)].remaining == pytest.approx(rows[("ticket", 1)].remaining)
    # A control that starts from θ0: its round-1 start weights are θ0 times its masks.
    model = lottery.load_round(build, out, 1, "snip", compile_kwargs=COMPILE)
    theta0 = model.layers[0].initial_weights["kernel"].numpy()
    assert np.array_equal(theta0, np.load(os.path.join(out, "initial.npz"))["0"])
    with pytest.raises(ValueError, match="each once"):
        run(str(tmp_path / "twice"), controls=(snip, tl.SNIP(data=(x, y))))
    with pytest.raises(ValueError, match="Expected controls from"):
        run(str(tmp_path / "name"), controls=("snip",))


def test_instability_points_measure_every_rounds_error_barrier(tmp_path):
    out = str(tmp_path / "run")
    history = run(out, rounds=1, controls=("random_prune",), instability_points=3, epochs=1)
    for row in history.rows:
        folder = RunPaths(out).round_dir(row.arm, row.round)
        path = json.load(open(os.path.join(folder, "instability.json")))
        assert path["alphas"] == [0.0, 0.5, 1.0]
        assert row.error_barrier == path["error_barrier"] >= 0.0
        # The path starts at the round's own trained network.
        assert path["accuracy"][0] == pytest.approx(row.final_test_accuracy)
    assert "err barrier" in str(history)
    with pytest.raises(ValueError, match="instability_points=2"):
        run(str(tmp_path / "bad"), instability_points=2)


@pytest.mark.slow  # two processes start Keras: about 30 s on 2 busy cores
def test_two_processes_run_seeds_into_one_out_dir_without_corrupting_it(tmp_path):
    import subprocess
    import sys

    import sweep_worker

    out = tmp_path / "shared"
    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sweep_worker.py")
    # Each process runs both seeds, in opposite orders: they run different units
    # at first, then meet on the same ones, round folder against round folder.
    processes = [
        subprocess.Popen(
            [sys.executable, worker, str(out), *order],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        for order in (("0", "1"), ("1", "0"))
    ]
    for process in processes:
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
        assert stdout.strip().endswith("done")
    leftovers = [p for p in out.rglob("*") if ".partial-" in p.name or ".tf_lottery-" in p.name]
    assert leftovers == []
    history = tl.LotteryHistory.from_json(out / "history.json")  # the last writer saw every round
    assert sorted((r.seed, r.arm, r.round) for r in history.rows) == sorted(
        (s, arm, r) for s in (0, 1) for arm, r in [("ticket", 0), ("ticket", 1), ("reinit", 1)]
    )
    assert tl.collect_history(str(out)).rows == history.rows
    # Every unit holds what one process alone writes.
    alone = tmp_path / "alone"
    sweep_worker.sweep(str(alone), (0, 1))
    for seed in (0, 1):
        for name in ("initial.npz", "round_1/masks.npz", "reinit/round_1/masks.npz"):
            with (
                np.load(out / f"seed_{seed}" / name) as a,
                np.load(alone / f"seed_{seed}" / name) as b,
            ):
                for key in a.files:
                    np.testing.assert_array_equal(a[key], b[key], err_msg=f"{seed}/{name}/{key}")
    # A process with other settings is refused, for a new seed too.
    with pytest.raises(ValueError, match="other settings.*rounds|other settings"):
        run(str(out), rounds=1, controls=("reinit",), seeds=(2,))


def test_controls_can_run_in_a_call_of_their_own_once_their_ticket_rounds_exist(tmp_path, capsys):
    out = str(tmp_path / "run")
    early = run(out, rounds=1, controls=("reinit",), arms=["reinit"], verbose=1)
    assert early.rows == [] and "Not started" in capsys.readouterr().out
    ticket = run(out, rounds=1, controls=("reinit",), arms=["ticket"])
    assert [(r.arm, r.round) for r in ticket.rows] == [("ticket", 0), ("ticket", 1)]
    both = run(out, rounds=1, controls=("reinit",), arms=["reinit"])
    assert [(r.arm, r.round) for r in both.rows] == [("ticket", 0), ("ticket", 1), ("reinit", 1)]
    with pytest.raises(ValueError, match="arms to name some of this run's arms"):
        run(out, rounds=1, controls=("reinit",), arms=["random_prune"])


def test_a_run_resumes_with_an_optimizer_that_keras_named_differently(tmp_path):
    x, y = data(64)

    def again(optimizer):
        return tl.find_winning_ticket(
            build,
            (x, y),
            validation_data=(x, y),
            rounds=0,
            epochs_per_round=1,
            out_dir=str(tmp_path / "run"),
            compile_kwargs=dict(COMPILE, optimizer=optimizer),
            verbose=0,
        )

    first = again(keras.optimizers.Adam(1e-3))
    # Keras names each new optimizer of a process anew: adam, adam_1, ...
    assert again(keras.optimizers.Adam(1e-3)).rows == first.rows
    with pytest.raises(ValueError, match="other settings.*compile_kwargs"):
        again(keras.optimizers.Adam(2e-3))


def test_load_round_needs_no_compile_and_its_errors_name_it(tmp_path):
    out = str(tmp_path / "run")
    run(out, rounds=1, controls=(), epochs=1)
    # The examples' form: the builder (uncompiled here) and no compile_kwargs.
    model = tl.load_round(build, out, 1)
    compiled = tl.load_round(build, out, 1, compile_kwargs=COMPILE)
    x, _ = data(8)
    np.testing.assert_array_equal(model.predict(x, verbose=0), compiled.predict(x, verbose=0))
    assert tl.sparsity(model).sparsity == tl.sparsity(compiled).sparsity > 0
    with pytest.raises(ValueError, match="load_round needs a build_model that returns a Keras"):
        tl.load_round(lambda: "not a model", out, 1)
    with pytest.raises(ValueError, match="load_round's build_model returned .* another arch"):
        tl.load_round(lambda: mlp(hidden=9), out, 1)

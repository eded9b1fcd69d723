"""find_winning_ticket: rounds on disk, controls, resume, history and plot."""

import json
import os

import keras
import numpy as np
import pytest
from conftest import data
from conftest import mlp

import tf_lottery as tl
from tf_lottery import lottery

COMPILE = dict(
    optimizer="adam",
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)


def build():
    return mlp()


def run(out_dir, rounds=2, controls=("reinit", "random_prune"), **kwargs):
    x, y = data(192)
    return tl.find_winning_ticket(
        build,
        (x[:128], y[:128]),
        validation_data=(x[128:160], y[128:160]),
        test_data=(x[160:], y[160:]),
        criterion=tl.PruneFraction(0.5),
        rounds=rounds,
        epochs_per_round=3,
        controls=controls,
        out_dir=out_dir,
        compile_kwargs=COMPILE,
        fit_kwargs={"batch_size": 32},
        verbose=0,
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
    # The ticket starts from θ0 * mask; reinit from other weights.
    model = lottery.load_round(build, out, 1, compile_kwargs=COMPILE)
    start = keras.models.clone_model(model)
    start.load_weights(os.path.join(out, "round_1", "start.weights.h5"))
    initial = keras.models.clone_model(model)
    initial.load_weights(os.path.join(out, "initial.weights.h5"))
    kernel, mask = start.layers[0].layer.kernel.numpy(), start.layers[0].masks["kernel"].numpy()
    np.testing.assert_array_equal(kernel, initial.layers[0].layer.kernel.numpy() * mask)
    start.load_weights(os.path.join(out, "reinit", "round_1", "start.weights.h5"))
    assert not np.allclose(
        start.layers[0].layer.kernel.numpy(), initial.layers[0].layer.kernel.numpy() * mask
    )
    # A round's artifacts reload into the model that gave the recorded accuracy.
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


def test_an_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    whole = run(str(tmp_path / "whole"), controls=("reinit",))
    out = str(tmp_path / "broken")
    real_fit = lottery._Experiment.fit
    calls = []

    def crash_in_round_two(self, model, folder, round_index):
        calls.append(round_index)
        if round_index == 2:
            raise KeyboardInterrupt("killed")
        return real_fit(self, model, folder, round_index)

    monkeypatch.setattr(lottery._Experiment, "fit", crash_in_round_two)
    with pytest.raises(KeyboardInterrupt):
        run(out, controls=("reinit",))
    monkeypatch.undo()
    assert os.path.isdir(os.path.join(out, "round_2.partial"))
    resumed = run(out, controls=("reinit",))
    assert not os.path.exists(os.path.join(out, "round_2.partial"))
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

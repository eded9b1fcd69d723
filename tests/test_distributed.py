"""Beyond one machine: multi-process JAX with `keras.distribution` (docs/scaling.md).

Two processes on this machine, joined over loopback, train one model with
`DataParallel`; `tests/jax_multiprocess_run.py` is what each of them runs.
"""

import glob
import os
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import tf_lottery as tl

HERE = os.path.dirname(__file__)
WORKER = os.path.join(HERE, "jax_multiprocess_run.py")
TIMEOUT = 240


def _gloo_missing():
    """Why JAX's gloo CPU collectives cannot run here, or None if they can."""
    if keras.backend.backend() != "jax":
        return None
    import jax
    from jax._src.lib import _jax  # jax says nowhere public whether gloo is built in

    if "jax_cpu_collectives_implementation" not in jax.config.values:
        return f"jax {jax.__version__} has no jax_cpu_collectives_implementation option"
    if not hasattr(_jax, "make_gloo_tcp_collectives"):
        return f"this jaxlib ({jax.__version__}) is built without gloo CPU collectives"
    return None


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        keras.backend.backend() != "jax",
        reason=f"multi-process JAX needs the JAX backend; this run uses {keras.backend.backend()}",
    ),
    pytest.mark.skipif(
        _gloo_missing() is not None, reason=f"no gloo CPU collectives: {_gloo_missing()}"
    ),
]


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run_two_processes(work_dir):
    """Runs the two workers; fails with a worker's log as soon as one fails.

    A process whose partner died waits in a collective (or in JAX's shutdown
    barrier) for minutes, so every child still running is killed on failure,
    with SIGKILL: JAX's distributed runtime takes SIGTERM for a preemption
    notice and carries on.
    """
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "JAX_PLATFORMS": "cpu",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": os.path.dirname(HERE),
    }
    port = _free_port()
    logs = [os.path.join(work_dir, f"log_{i}.txt") for i in range(2)]
    children = []
    try:
        for i, log in enumerate(logs):
            with open(log, "w") as output:
                children.append(
                    subprocess.Popen(
                        [sys.executable, WORKER, str(i), str(port), str(work_dir)],
                        stdout=output,
                        stderr=subprocess.STDOUT,
                        env=env,
                    )
                )
        deadline = time.monotonic() + TIMEOUT
        while any(child.poll() is None for child in children):
            failed = [i for i, c in enumerate(children) if c.poll() not in (None, 0)]
            if failed:
                pytest.fail(f"process {failed[0]} failed:\n{_tail(logs[failed[0]])}")
            if time.monotonic() > deadline:
                pytest.fail(f"no result after {TIMEOUT} s:\n{_tail(logs[0])}\n{_tail(logs[1])}")
            time.sleep(0.2)
        for i, child in enumerate(children):
            assert child.returncode == 0, f"process {i} failed:\n{_tail(logs[i])}"
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()


def _tail(path, lines=40):
    with open(path) as file:
        return "".join(file.readlines()[-lines:])


def _dumps(work_dir, process_id, epochs):
    folder = os.path.join(work_dir, "dumps", f"process_{process_id}")
    assert sorted(int(name[6:-4]) for name in os.listdir(folder)) == list(range(epochs))
    return [dict(np.load(os.path.join(folder, f"epoch_{e}.npz"))) for e in range(epochs)]


def _files(folder):
    return sorted(
        os.path.relpath(path, folder)
        for path in glob.glob(os.path.join(folder, "**"), recursive=True)
        if os.path.isfile(path)
    )


def test_two_jax_processes_prune_one_model_and_only_process_0_writes(tmp_path):
    import jax_multiprocess_run as worker  # imports jax: only under the JAX backend

    _run_two_processes(tmp_path)
    first, second = (_dumps(tmp_path, i, worker.EPOCHS) for i in range(2))

    # Both processes hold the same masks, θ0 and weights at every epoch end,
    # rounds included, to the bit.
    for epoch, (a, b) in enumerate(zip(first, second)):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"epoch {epoch}: {key}")

    every, rounds = worker.PRUNING["every"], worker.PRUNING["rounds"]
    expected = [min((epoch + 1) // every, rounds) for epoch in range(worker.EPOCHS)]
    assert [int(d["rounds"]) for d in first] == expected
    # Kernels carry weight masks; biases carry the unit masks of their layers.
    masks = [k for k in first[0] if k.endswith("/kernel/mask")]
    assert masks == ["fc1/kernel/mask", "fc2/kernel/mask", "out/kernel/mask"]
    assert all(k.endswith("/bias/mask") for k in first[0] if k.endswith("/mask") and k not in masks)
    for epoch, arrays in enumerate(first):
        for mask_key in masks:
            key = mask_key[: -len("/mask")]
            mask, weight = arrays[mask_key], arrays[f"{key}/weight"]
            assert np.all(weight[mask == 0] == 0), f"epoch {epoch}: pruned {key} not zero"
            if arrays["rounds"] > (first[epoch - 1]["rounds"] if epoch else 0):
                # A round ended this epoch: the survivors went back to θ0.
                np.testing.assert_array_equal(weight, arrays[f"{key}/initial"] * mask)
        for key in arrays:
            if key.endswith("/initial"):  # θ0 never moves
                np.testing.assert_array_equal(arrays[key], first[0][key])
    final = first[-1]
    for mask_key in masks:
        kept = final[mask_key].mean()
        # Two rounds of PruneFraction(0.5): a quarter of each hidden kernel is
        # left, and 0.75² of the output kernel (output_rate is half the rate).
        assert kept == pytest.approx(0.25 if mask_key.startswith("fc") else 0.5625, abs=0.01)

    # Process 0 trained on the gradient of both shards: one epoch of a single
    # process on both shards together (the same global batches) lands on the
    # same weights, up to the order of the float sums.
    keras.utils.set_random_seed(0)
    single = tl.wrap(worker.lenet())
    single.compile(**worker.compile_kwargs())
    (x0, y0), (x1, y1) = worker.shard(0), worker.shard(1)
    b = worker.BATCH
    batches = range(0, worker.SAMPLES, b)
    x = np.concatenate([np.concatenate([x0[i : i + b], x1[i : i + b]]) for i in batches])
    y = np.concatenate([np.concatenate([y0[i : i + b], y1[i : i + b]]) for i in batches])
    single.fit(x, y, batch_size=2 * b, epochs=1, shuffle=False, verbose=0)
    for key, value in worker.arrays(single).items():
        np.testing.assert_allclose(first[0][key], value, rtol=1e-4, atol=1e-6, err_msg=key)

    # Only process 0 wrote to its disk. Process 1 made the same calls, into a
    # scratch folder, and its lottery run there agrees with process 0's.
    checkpoints = [f"checkpoints/epoch_{e + 1}.weights.h5" for e in range(worker.EPOCHS)]
    written = _files(tmp_path / "disk_0")
    assert [f for f in written if not f.startswith("lottery/")] == checkpoints + ["model.keras"]
    assert "lottery/round_1/masks.npz" in written
    assert _files(tmp_path / "disk_1") == []
    assert _files(tmp_path / "scratch_1") == written
    for name in (f for f in written if f.endswith(".npz")):
        with np.load(tmp_path / "disk_0" / name) as a, np.load(tmp_path / "scratch_1" / name) as b:
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name}: {key}")

    # What process 0 saved loads on one device and holds the final masks.
    loaded = tl.load_model(str(tmp_path / "disk_0" / "model.keras"))
    for key, value in worker.arrays(loaded).items():
        np.testing.assert_array_equal(value, final[key], err_msg=key)

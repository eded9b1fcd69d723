"""Atomic writes: complete files with the permissions of an ordinary open()."""

import os
import stat

import pytest

from tf_lottery.files import save_figure
from tf_lottery.files import write_atomically


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(params=[0o022, 0o002, 0o077], ids=["umask022", "umask002", "umask077"])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def test_atomic_files_get_the_permissions_of_open(tmp_path, umask):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(tmp_path / "plain.txt", "w") as file:
        file.write("x")
    write_atomically(str(tmp_path / "atomic.json"), "{}")
    save_figure(plt.figure(), str(tmp_path / "figure.png"))
    expected = mode(tmp_path / "plain.txt")
    assert expected == 0o666 & ~umask
    assert mode(tmp_path / "atomic.json") == expected
    assert mode(tmp_path / "figure.png") == expected


def test_an_atomic_write_replaces_the_whole_file(tmp_path):
    path = str(tmp_path / "a.txt")
    write_atomically(path, "a long first version")
    write_atomically(path, b"short")
    assert open(path, "rb").read() == b"short"
    assert os.listdir(tmp_path) == ["a.txt"]

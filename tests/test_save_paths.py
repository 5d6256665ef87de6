"""gc.save and what is at the path (issue 10, items 5 and 8).

* Symbolic links are written through to their final target (one link, a chain of two,
  a dangling link, links across folders); the link itself stays a link.
* A directory, FIFO or socket at the path (or at a link's target) is refused before
  anything is opened: a FIFO must not block.
* A new file follows the umask (0o666 & ~umask); an existing file keeps its mode.
* Atomicity holds through links (a failure keeps the old target and leaves no
  temporary file in the target's folder), and errors name the target, never the
  hidden temporary file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import threading

import numpy as np
import pytest

import gradchain as gc
import gradchain.io as gio


def _model(seed: int) -> gc.MLP:
    return gc.MLP([3, 5, 5, 2], norm="batch", seed=seed)


def _weights(path) -> bytes:
    return gc.load(path).state_dict()["layers.0.weight"].tobytes()


def _w(m: gc.MLP) -> bytes:
    return m.state_dict()["layers.0.weight"].tobytes()


def _in_thread(fn, timeout: float = 20.0):
    """Run fn in a daemon thread: a save that blocks (e.g. opening a FIFO) fails the test
    instead of hanging it. Returns the exception fn raised (or None)."""
    out: list[BaseException | None] = []

    def run():
        try:
            fn()
            out.append(None)
        except BaseException as e:  # noqa: BLE001
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "gc.save blocked (it opened a FIFO?)"
    return out[0]


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


# --------------------------------------------------------------------------- symlinks
def test_save_writes_through_a_symlink(tmp_path):
    a, b = _model(1), _model(2)
    real = tmp_path / "real.npz"
    gc.save(a, real)
    link = tmp_path / "link.npz"
    link.symlink_to("real.npz")  # relative, as `ln -s real.npz link.npz`
    gc.save(b, link)
    assert link.is_symlink() and os.readlink(link) == "real.npz", "save replaced the link"
    assert _weights(real) == _w(b), "the link's target still holds the old model"
    assert sorted(os.listdir(tmp_path)) == ["link.npz", "real.npz"]


def test_save_follows_a_chain_of_links_across_folders(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "links").mkdir()
    real = tmp_path / "data" / "ckpt.npz"
    gc.save(_model(1), real)
    l1 = tmp_path / "links" / "l1.npz"
    l1.symlink_to(real)                       # absolute
    l2 = tmp_path / "l2.npz"
    l2.symlink_to(os.path.join("links", "l1.npz"))  # relative to l2's folder
    b = _model(2)
    gc.save(b, str(l2))
    assert l2.is_symlink() and l1.is_symlink()
    assert _weights(real) == _w(b)
    assert os.listdir(tmp_path / "links") == ["l1.npz"], "temp file in the link's folder"
    assert os.listdir(tmp_path / "data") == ["ckpt.npz"], "temp file left behind"


def test_save_through_a_dangling_link_creates_its_target(tmp_path):
    (tmp_path / "out").mkdir()
    link = tmp_path / "latest.npz"
    link.symlink_to(os.path.join("out", "new.npz"))
    b = _model(3)
    gc.save(b, link)
    target = tmp_path / "out" / "new.npz"
    assert link.is_symlink() and stat.S_ISREG(os.lstat(target).st_mode)
    assert _weights(link) == _weights(target) == _w(b)


def test_save_refuses_a_symlink_loop(tmp_path):
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(OSError, match="symbolic links") as e:
        gc.save(_model(1), tmp_path / "a")
    assert e.value.errno == errno.ELOOP
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]


# --------------------------------------------------------------------------- non-regular
def test_save_refuses_a_fifo_without_opening_it(tmp_path):
    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    e = _in_thread(lambda: gc.save(_model(1), fifo))
    assert isinstance(e, ValueError), f"expected ValueError, got {e!r}"
    assert str(fifo) in str(e) and "FIFO" in str(e) and "not a regular file" in str(e)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced"
    # and through a link: the message names both
    link = tmp_path / "via.npz"
    link.symlink_to("pipe.npz")
    e = _in_thread(lambda: gc.save(_model(1), link))
    assert isinstance(e, ValueError) and str(fifo) in str(e) and str(link) in str(e)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and link.is_symlink()
    assert sorted(os.listdir(tmp_path)) == ["pipe.npz", "via.npz"]


def test_save_refuses_a_socket(tmp_path):
    path = tmp_path / "s.npz"
    if len(str(path)) > 100:
        pytest.skip("tmp path too long for an AF_UNIX socket")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        e = _in_thread(lambda: gc.save(_model(1), path))
        assert isinstance(e, ValueError) and "socket" in str(e) and str(path) in str(e)
        assert stat.S_ISSOCK(os.lstat(path).st_mode)


def test_save_refuses_a_directory_and_a_link_to_one(tmp_path):
    d = tmp_path / "dir"
    d.mkdir()
    (d / "keep.txt").write_text("x")
    (tmp_path / "to-dir").symlink_to("dir")
    for p in (d, tmp_path / "to-dir"):
        with pytest.raises(IsADirectoryError, match="directory") as e:
            gc.save(_model(1), p)
        assert e.value.filename == str(d)
    assert os.listdir(d) == ["keep.txt"]
    assert sorted(os.listdir(tmp_path)) == ["dir", "to-dir"]


# --------------------------------------------------------------------------- modes
@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_file_follows_the_umask(tmp_path, mask, mode):
    path = tmp_path / "m.npz"
    with umask(mask):
        gc.save(_model(1), path)
    assert stat.S_IMODE(os.stat(path).st_mode) == mode


@pytest.mark.parametrize("existing", [0o644, 0o640, 0o600, 0o664])
def test_existing_file_keeps_its_mode(tmp_path, existing):
    path = tmp_path / "m.npz"
    gc.save(_model(1), path)
    os.chmod(path, existing)
    with umask(0o077):  # a stricter umask must not change an existing file's mode
        gc.save(_model(2), path)
    assert stat.S_IMODE(os.stat(path).st_mode) == existing
    assert _weights(path) == _w(_model(2))
    link = tmp_path / "l.npz"  # through a link: the target's mode, the link untouched
    link.symlink_to("m.npz")
    with umask(0o022):
        gc.save(_model(3), link)
    assert stat.S_IMODE(os.stat(path).st_mode) == existing and link.is_symlink()


# --------------------------------------------------------------------------- atomicity
@pytest.mark.parametrize("failure", ["write", "interrupt"])
def test_failed_save_through_a_link_keeps_the_target(tmp_path, monkeypatch, failure):
    (tmp_path / "data").mkdir()
    real = tmp_path / "data" / "m.npz"
    gc.save(_model(1), real)
    old = real.read_bytes()
    link = tmp_path / "m.npz"
    link.symlink_to(real)
    exc = KeyboardInterrupt if failure == "interrupt" else OSError
    real_savez = np.savez

    def broken(f, **arrays):
        real_savez(f, **dict(list(arrays.items())[:2]))
        raise exc("disk full")

    monkeypatch.setattr(gio.np, "savez", broken)
    with pytest.raises(exc):
        gc.save(_model(2), link)
    monkeypatch.undo()
    assert real.read_bytes() == old and link.is_symlink()
    assert os.listdir(tmp_path / "data") == ["m.npz"], "temporary file left behind"


# --------------------------------------------------------------------------- messages
def test_save_errors_name_the_target_not_the_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "missing-dir" / "m.npz"
    with pytest.raises(FileNotFoundError) as e:
        gc.save(_model(1), target)
    assert e.value.filename == str(target) and ".tmp" not in str(e.value), str(e.value)

    path = tmp_path / "m.npz"

    def cross_device(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link", src, dst)

    monkeypatch.setattr(gio.os, "replace", cross_device)
    with pytest.raises(OSError) as e:
        gc.save(_model(1), path)
    assert e.value.errno == errno.EXDEV
    assert str(path) in str(e.value) and ".tmp" not in str(e.value), str(e.value)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == [], "temporary file left behind"

"""samix._io: atomic writes leave either the old file or the whole new one, with normal permissions."""

from __future__ import annotations

import os
import stat

import pytest

from samix import _io


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_writes_bytes_and_text_and_creates_folders(tmp_path):
    out = _io.atomic_write_bytes(tmp_path / "a" / "b" / "x.bin", b"\x00\x01")
    assert out == tmp_path / "a" / "b" / "x.bin" and out.read_bytes() == b"\x00\x01"
    _io.atomic_write_text(str(tmp_path / "t.txt"), "λ = 0.5\n")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "λ = 0.5\n"
    _io.atomic_write(tmp_path / "t.txt", lambda f: (f.write(b"new"), f.write(b"er")))
    assert (tmp_path / "t.txt").read_bytes() == b"newer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "t.txt"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_permissions_are_those_of_a_plain_open(tmp_path, umask):
    old = os.umask(umask)
    try:
        with open(tmp_path / "plain", "w") as f:
            f.write("x")
        _io.atomic_write_text(tmp_path / "atomic", "x")
        _io.atomic_write_text(tmp_path / "plain", "replaced")  # replacing keeps the usual mode too
    finally:
        os.umask(old)
    assert _mode(tmp_path / "atomic") == 0o666 & ~umask
    assert _mode(tmp_path / "plain") == 0o666 & ~umask


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failing_write_leaves_the_old_file_and_no_temporary(tmp_path, error):
    path = tmp_path / "ck" / "last.pt"
    _io.atomic_write_bytes(path, b"old")

    def broken(f):
        f.write(b"partial")
        raise error("stop")

    with pytest.raises(error):
        _io.atomic_write(path, broken)
    assert path.read_bytes() == b"old"
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]
    with pytest.raises(error):
        _io.atomic_write(tmp_path / "new.bin", broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_the_library_writers_use_it(tmp_path):
    import torch

    from samix.engine import checkpoint

    old = os.umask(0o022)
    try:
        checkpoint.atomic_torch_save({"a": torch.ones(2)}, tmp_path / "c.pt")
        checkpoint.atomic_write_text(tmp_path / "s.json", "{}")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "c.pt") == 0o644 and _mode(tmp_path / "s.json") == 0o644
    assert torch.equal(checkpoint.load_checkpoint(tmp_path / "c.pt")["a"], torch.ones(2))

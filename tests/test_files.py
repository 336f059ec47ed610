"""Atomic writers and unique_path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tools.files import (
    atomic_path,
    file_sha256,
    unique_path,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_json_atomic_complete_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "metrics.json"  # parent folders are created
    data = {"b": 1, "a": [1, 2, 3], "path": Path("x/y"), "score": np.float32(0.5), "n": np.int64(7)}
    assert write_json_atomic(target, data) == target
    text = target.read_text()
    assert text.endswith("}\n")
    assert json.loads(text) == {"b": 1, "a": [1, 2, 3], "path": "x/y", "score": 0.5, "n": 7}
    assert list(json.loads(text)) == ["b", "a", "path", "score", "n"]  # key order kept
    assert _names(target.parent) == ["metrics.json"]


def test_write_text_atomic_replaces_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("old")
    write_text_atomic(target, "new ✓ text\n" * 1000)
    assert target.read_text(encoding="utf-8") == "new ✓ text\n" * 1000
    assert _names(tmp_path) == ["notes.txt"]


def test_failing_writer_leaves_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "model.bin"
    target.write_bytes(b"original")

    def writer(handle) -> None:
        handle.write(b"half of the new cont")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_bytes_atomic(target, writer)
    assert target.read_bytes() == b"original"
    assert _names(tmp_path) == ["model.bin"]


def test_failing_writer_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "fresh.bin"

    def writer(handle) -> None:
        handle.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_bytes_atomic(target, writer)
    assert _names(tmp_path) == []


def test_unserialisable_json_leaves_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text('{"ok": true}\n')
    with pytest.raises(TypeError, match="cannot write object to JSON"):
        write_json_atomic(target, {"fine": 1, "bad": object()})
    assert json.loads(target.read_text()) == {"ok": True}
    assert _names(tmp_path) == ["report.json"]


def test_atomic_path_temp_beside_target(tmp_path: Path) -> None:
    target = tmp_path / "table.csv"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path
        assert tmp != target
        assert tmp.name.startswith(".table.csv.") and tmp.name.endswith(".tmp.csv")
        tmp.write_text("a,b\n")
        assert not target.exists()  # nothing under the final name until the block succeeds
    assert target.read_text() == "a,b\n"
    assert _names(tmp_path) == ["table.csv"]


def test_atomic_path_error_removes_temp(tmp_path: Path) -> None:
    target = tmp_path / "table.csv"
    with pytest.raises(ValueError, match="boom"), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise ValueError("boom")
    assert _names(tmp_path) == []


def test_file_sha256(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    assert file_sha256(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert file_sha256(path, chunk=1) == file_sha256(path)


def test_unique_path_free(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    assert unique_path(path) == path


def test_unique_path_numbering(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text("0")
    assert unique_path(path) == tmp_path / "run.1.json"
    (tmp_path / "run.1.json").write_text("1")
    (tmp_path / "run.2.json").write_text("2")
    assert unique_path(path) == tmp_path / "run.3.json"
    # A gap is reused rather than skipped past.
    (tmp_path / "run.1.json").unlink()
    assert unique_path(path) == tmp_path / "run.1.json"
    assert not (tmp_path / "run.1.json").exists()  # unique_path never creates files


def test_unique_path_without_suffix_and_folders(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    assert unique_path(folder) == tmp_path / "out.1"
    file = tmp_path / "archive.tar.gz"
    file.write_bytes(b"")
    assert unique_path(file) == tmp_path / "archive.tar.1.gz"


def test_atomic_outputs_get_the_umask_mode_not_mkstemps_0600(tmp_path: Path) -> None:
    written = write_text_atomic(tmp_path / "results.md", "x")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert os.stat(written).st_mode & 0o777 == os.stat(plain).st_mode & 0o777

"""Atomic output writing and manifests: a crash never leaves a half-written file under its final name."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO


def _process_umask() -> int:
    mask = os.umask(0)  # Python < 3.13 can read the umask only by setting it
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; outputs get the mode a plain open() would give (shared result folders stay readable).
_FILE_MODE = 0o666 & ~_process_umask()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path`` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _FILE_MODE)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes_atomic(path: str | Path, writer: Callable[[BinaryIO], Any]) -> Path:
    """Call ``writer`` on a binary file handle and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        writer(handle)
        handle.flush()
        os.fsync(handle.fileno())
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write a text file atomically."""
    return write_bytes_atomic(path, lambda handle: handle.write(text.encode("utf-8")))


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write JSON (indented, keys kept in order) atomically."""
    return write_text_atomic(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()  # numpy / torch scalars
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def folder_sha256(root: str | Path, subfolders: tuple[str, ...] | None = None) -> str:
    """One hex sha256 over every file (relative path and content) under ``root``, or under its ``subfolders``
    that exist; identifies a model folder (e.g. a diffusers base model) whatever its absolute path."""
    root = Path(root).expanduser()
    tops = [root / s for s in subfolders] if subfolders else [root]
    files = sorted(f for top in tops if top.is_dir() for f in top.rglob("*") if f.is_file())
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.relative_to(root).as_posix()}\0{file_sha256(f)}\n".encode())
    return digest.hexdigest()


def unique_path(path: Path) -> Path:
    """``path`` if free, else ``stem.1.suffix``, ``stem.2.suffix``, ... (never replaces an earlier file)."""
    if not path.exists():
        return path
    n = 1
    while (candidate := path.with_name(f"{path.stem}.{n}{path.suffix}")).exists():
        n += 1
    return candidate


def json_plain(value: Any) -> Any:
    """A value as plain JSON for a manifest: dicts and sequences recursively, tuples -> lists, paths etc. -> str."""
    if isinstance(value, dict):
        return {str(k): json_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def read_output_manifest(manifest: Path, outputs: list[str], what: str) -> dict[str, Any] | None:
    """The manifest of an output folder, None for a fresh folder; refuse outputs without one, or a broken one.

    Args:
        manifest: the manifest file; its folder is the output folder.
        outputs: output file names found in the folder (they must not exist without a manifest).
        what: what the folder holds, for the message (e.g. 'captions').

    Raises:
        FileExistsError: outputs but no manifest (what produced them is unknown: never overwritten), or a
            manifest that is not valid JSON.
    """
    if not manifest.is_file():
        if outputs:
            raise FileExistsError(
                f"{manifest.parent} holds {', '.join(outputs)} but no {manifest.name}, so what produced them is "
                "unknown; they are never overwritten (delete them if an interrupted run left them)"
            )
        return None
    try:
        return json.loads(manifest.read_text())
    except json.JSONDecodeError as err:
        raise FileExistsError(f"{manifest} is not valid JSON ({err}); refusing to write {what} there") from err


def finished_record(done: str | Path, record_format: int, settings: Any, what: str) -> bool:
    """Resume check of a tool whose JSON record ``done`` is written last (its presence marks the results complete).

    Returns False when ``done`` does not exist (compute), True when it holds results of this ``record_format`` and
    these ``settings`` (a rerun does nothing; said on stdout); raises FileExistsError naming ``what`` (e.g.
    "metric-agreement results") when it holds results of other inputs or settings, which are never overwritten.
    """
    done = Path(done)
    if not done.is_file():
        return False
    record = json.loads(done.read_text())
    if record.get("format") == record_format and record.get("settings") == settings:
        print(f"{done} already holds these results; nothing to do")
        return True
    raise FileExistsError(f"{done.parent} holds {what} of other inputs or settings; choose another --out")

"""Publishing files so that a reader never sees half of one.

Every file the daemon publishes (models, checkpoints, stats) goes through here: written to
a temp file in the destination folder (same filesystem, so the rename is atomic), flushed
and fsynced, made world-readable (actors may run as another user), then `os.replace`d.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FILE_MODE = 0o644


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, mode: int = FILE_MODE, durable: bool = True) -> Iterator[Path]:
    """Yield a temp path beside `dest`; on a clean exit it is fsynced and renamed onto `dest`.

    On an exception the temp file is removed and `dest` is untouched, which is how a
    failed ONNX check avoids publishing. `durable=False` skips the fsyncs: readers still
    never see half a file (the rename is atomic), only a power cut could lose the newest
    version. That is right for stats.json, rewritten many times a second.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if durable:
            with open(tmp_path, "rb+") as f:
                os.fsync(f.fileno())
        os.chmod(tmp_path, mode)
        os.replace(tmp_path, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise
    if durable:
        _fsync_dir(dest.parent)


def atomic_write_bytes(dest: str | os.PathLike, data: bytes, durable: bool = True) -> None:
    with atomic_path(dest, durable=durable) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(dest: str | os.PathLike, obj, durable: bool = True) -> None:
    # allow_nan=False: a NaN would make the file unreadable to strict JSON parsers.
    data = json.dumps(obj, allow_nan=False, separators=(",", ":")).encode()
    atomic_write_bytes(dest, data, durable=durable)


def finite_or_none(obj: Any) -> Any:
    """`obj` with every NaN or infinite float (in nested dicts and lists too) made None, so
    `json.dumps(..., allow_nan=False)` accepts it and JSON readers see null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite_or_none(v) for v in obj]
    return obj


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_temp_files(folder: str | os.PathLike) -> int:
    """Delete temp files a killed process left behind (they never became visible files)."""
    removed = 0
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                p.unlink()
                removed += 1
    return removed

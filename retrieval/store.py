"""A directory of versions, each written whole before a pointer file names it as live.

Readers follow the pointer, so they see either the old version or the new one, never a half
written directory: the version is built under a temporary name, renamed into place, and only
then does `os.replace` swap the pointer (atomic on POSIX file systems). Each step is flushed to
disk (fsync) before the next, so after a power cut the pointer never names a version whose
files the kernel had not written yet.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

POINTER = "LIVE"


def new_version_name() -> str:
    """A sortable, unique name such as 20261123T161500-3fa2c1."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


class VersionStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, version: str) -> Path:
        return self.root / version

    def write(self, writer: Callable[[Path], None], *, version: str | None = None) -> str:
        """Let `writer` fill a fresh directory, then move it into place; returns its version."""
        version = version or new_version_name()
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{version}"
        try:
            tmp.mkdir()
            writer(tmp)
            _sync_tree(tmp)
            tmp.rename(self.path(version))
            sync_dir(self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return version

    def set_live(self, version: str) -> None:
        if not self.path(version).is_dir():
            raise FileNotFoundError(f"No version {version!r} under {self.root}")
        tmp = self.root / f".{POINTER}.{secrets.token_hex(4)}"
        with open(tmp, "w") as f:
            f.write(version)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / POINTER)
        sync_dir(self.root)

    def clear_live(self) -> None:
        """Point at nothing (callers fall back to what they do without a version)."""
        (self.root / POINTER).unlink(missing_ok=True)
        sync_dir(self.root)

    def live(self) -> str | None:
        """The live version's name, or None when nothing has been published."""
        try:
            return (self.root / POINTER).read_text().strip() or None
        except FileNotFoundError:
            return None

    def versions(self) -> list[str]:
        """Published version names, oldest first."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and p.name[0] != ".")

    def prune(self, *, keep: int) -> list[str]:
        """Delete all but the newest `keep` versions, never the live one; returns what went."""
        live = self.live()
        old = [v for v in self.versions()[:-keep] if v != live] if keep > 0 else []
        for version in old:
            shutil.rmtree(self.path(version), ignore_errors=True)
        return old

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Serialise writers across processes, so the last version published is the newest."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def sync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename, a new or removed file) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_tree(root: Path) -> None:
    """Flush every file under `root`, then the directories that hold them."""
    for directory, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        sync_dir(Path(directory))

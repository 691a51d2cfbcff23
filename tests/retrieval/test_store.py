from pathlib import Path

import pytest

from retrieval.store import VersionStore


def test_write_publishes_nothing_when_the_writer_fails(tmp_path: Path) -> None:
    # given
    store = VersionStore(tmp_path)

    def broken(directory: Path) -> None:
        (directory / "half.bin").write_bytes(b"x")
        raise RuntimeError("killed halfway")

    # when
    with pytest.raises(RuntimeError):
        store.write(broken, version="v1")

    # then
    assert store.versions() == []
    assert store.live() is None
    assert list(tmp_path.iterdir()) == []  # no half-written directory left behind


def test_set_live_points_at_a_complete_version(tmp_path: Path) -> None:
    store = VersionStore(tmp_path)
    first = store.write(lambda d: (d / "weights").write_text("1"), version="a")
    second = store.write(lambda d: (d / "weights").write_text("2"), version="b")

    store.set_live(first)
    assert store.live() == "a"
    store.set_live(second)

    assert store.live() == "b"
    assert (store.path(store.live()) / "weights").read_text() == "2"
    with pytest.raises(FileNotFoundError):
        store.set_live("missing")


def test_prune_keeps_the_newest_and_the_live_version(tmp_path: Path) -> None:
    store = VersionStore(tmp_path)
    for name in ["v1", "v2", "v3", "v4"]:
        store.write(lambda d: None, version=name)
    store.set_live("v1")

    removed = store.prune(keep=2)

    assert removed == ["v2"]
    assert store.versions() == ["v1", "v3", "v4"]


def test_each_step_is_on_disk_before_the_next_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A power cut must not leave the pointer naming a version whose files were still only in
    # the page cache: every file is flushed before the rename that publishes its directory, and
    # the pointer's file and directory entry before set_live returns.
    import os

    events: list[str] = []
    real_fsync, real_rename, real_replace = os.fsync, Path.rename, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync " + os.path.relpath(os.readlink(f"/proc/self/fd/{fd}"), tmp_path))
        real_fsync(fd)

    def rename(self: Path, target: Path) -> Path:
        events.append(f"rename {Path(self).name} -> {Path(target).name}")
        return real_rename(self, target)

    def replace(src: str | Path, dst: str | Path) -> None:
        events.append(f"replace {Path(dst).name}")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(Path, "rename", rename)
    monkeypatch.setattr(os, "replace", replace)
    store = VersionStore(tmp_path)

    def writer(directory: Path) -> None:
        (directory / "sub").mkdir()
        (directory / "sub" / "weights").write_text("1")
        (directory / "head").write_text("2")

    store.write(writer, version="v1")
    store.set_live("v1")

    publish = events.index("rename .tmp-v1 -> v1")
    flushed_before = set(events[:publish])
    assert {"fsync .tmp-v1/sub/weights", "fsync .tmp-v1/head", "fsync .tmp-v1"} <= flushed_before
    assert events[publish + 1] == "fsync ."  # the rename itself
    pointer = events.index("replace LIVE")
    assert events[pointer - 1].startswith("fsync .LIVE.")  # the pointer's content
    assert events[pointer + 1 :] == ["fsync ."]  # and the swap
    assert store.live() == "v1"

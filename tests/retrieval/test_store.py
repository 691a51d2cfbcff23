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

"""The local store reuses deleted objects' files (their pages are in memory already), but never a
file that somebody still maps."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest

from starburst.serialization import deserialize, serialize
from starburst.store import local
from starburst.store.local import FREE_DIR, LocalStore

MiB = 1 << 20


@pytest.fixture
def store(tmp_path):
    directory = tmp_path / "store"
    directory.mkdir(mode=0o700)
    return LocalStore(str(directory))


def _array(seed: int, mib: int = 4) -> np.ndarray:
    return np.full(mib * MiB // 8, float(seed))


def _inode(store: LocalStore, key: str) -> int:
    return os.stat(os.path.join(store.directory, key)).st_ino


def test_a_deleted_objects_file_is_reused_by_the_next_put(store):
    store.put("a", serialize(_array(1)))
    first = _inode(store, "a")
    store.delete("a")
    assert not os.path.exists(os.path.join(store.directory, "a"))
    assert len(os.listdir(os.path.join(store.directory, FREE_DIR))) == 1
    store.put("b", serialize(_array(2, mib=3)))  # smaller: the file is cut to size
    assert _inode(store, "b") == first
    assert os.listdir(os.path.join(store.directory, FREE_DIR)) == []
    value = deserialize(store.get("b"))
    assert value.shape == (3 * MiB // 8,) and (value == 2.0).all()
    assert os.path.getsize(os.path.join(store.directory, "b")) == serialize(_array(2, mib=3)).size
    assert oct(os.stat(os.path.join(store.directory, "b")).st_mode & 0o777) == "0o600"


def test_a_mapped_file_is_never_reused(store):
    store.put("a", serialize(_array(1)))
    held = deserialize(store.get("a"))  # a reader keeps the array (its mapping) after the delete
    first = _inode(store, "a")
    store.delete("a")
    assert not os.path.exists(os.path.join(store.directory, FREE_DIR)) or \
        os.listdir(os.path.join(store.directory, FREE_DIR)) == []
    store.put("b", serialize(_array(2)))
    assert _inode(store, "b") != first
    assert (held == 1.0).all()  # the reader's values are intact
    del held
    gc.collect()  # the mapping (and its lock) is gone: this file may be reused
    store.delete("b")
    assert len(os.listdir(os.path.join(store.directory, FREE_DIR))) == 1


def test_the_pool_is_bounded_and_small_objects_are_not_kept(store, monkeypatch):
    monkeypatch.setattr(local, "RECYCLE_BYTES", 10 * MiB)
    for key in "abc":
        store.put(key, serialize(_array(1)))
    store.put("small", serialize(np.zeros(1000)))
    for key in ("a", "b", "c", "small"):
        store.delete(key)
    kept = os.listdir(os.path.join(store.directory, FREE_DIR))
    assert len(kept) == 2  # 2 x 4 MiB fit under 10 MiB, the third and the small one were unlinked
    assert sorted(os.listdir(store.directory)) == [FREE_DIR]


def test_memory_kept_for_reuse_goes_before_an_object_spills(tmp_path):
    import shutil
    import tempfile

    if not os.access("/dev/shm", os.W_OK):  # (macOS, and CI's simulation of it)
        pytest.skip("needs a writable memory-backed file system (/dev/shm): its free space is exact")
    directory = tempfile.mkdtemp(dir="/dev/shm", prefix="starburst-test-store-")
    spill = tmp_path / "spill"
    spill.mkdir(mode=0o700)
    try:
        with open(os.path.join(directory, local.SPILL_FILE), "w") as f:
            f.write(str(spill))
        store = LocalStore(directory)
        store.put("a", serialize(_array(1, mib=64)))
        store.delete("a")  # 64 MiB kept for reuse

        def used() -> int:
            st = os.statvfs(directory)
            return (st.f_blocks - st.f_bfree) * st.f_frsize

        # 1 MiB more fits only without the kept file (a margin of ~30 MiB either way for what
        # other processes write to /dev/shm meanwhile)
        store._cap = used() - 32 * MiB
        store.put("b", serialize(_array(2, mib=1)))
        assert os.listdir(spill) == []
        assert not os.path.exists(os.path.join(directory, FREE_DIR)) or \
            os.listdir(os.path.join(directory, FREE_DIR)) == []
        assert (deserialize(store.get("b")) == 2.0).all()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_files_kept_for_reuse_are_given_back_when_unused(store, monkeypatch):
    store.put("a", serialize(_array(1)))
    store.delete("a")
    free = os.path.join(store.directory, FREE_DIR)
    store.release_unused()
    assert len(os.listdir(free)) == 1  # just kept: stays
    monkeypatch.setattr(local, "RECYCLE_KEEP_S", 0.0)
    store.release_unused()
    assert os.listdir(free) == []


def test_memory_kept_for_reuse_goes_before_a_full_store_is_reported(store, monkeypatch):
    """A store without a spill directory (the memory store itself full): the kept files are given
    back and the write tried again before ObjectStoreFullError."""
    import errno

    from starburst import _files

    store.put("a", serialize(_array(1)))
    store.delete("a")
    free = os.path.join(store.directory, FREE_DIR)
    assert len(os.listdir(free)) == 1
    real = _files.write_atomic

    def full_while_files_are_kept(path, chunks, **kwargs):
        if os.listdir(free):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, chunks, **kwargs)

    monkeypatch.setattr(local, "write_atomic", full_while_files_are_kept)
    store.put("b", serialize(np.full(1000, 2.0)))  # too small to take a kept file: a new file
    assert os.listdir(free) == []
    assert (deserialize(store.get("b")) == 2.0).all()

"""The emulated engine's C kick check: built into the user's own cache, never loaded from a
folder or file someone else could write, and replaced by the Python check (which is just as
exact) wherever it cannot be had. Each case then runs a machine to its end."""

from __future__ import annotations

import pytest

from kvmlab import Machine, programs
from kvmlab.engines import uc_kick

pytestmark = pytest.mark.emulated


@pytest.fixture
def fresh_build(monkeypatch):
    """uc_kick as if no machine had asked for the hook yet in this process."""
    monkeypatch.setattr(uc_kick, "_tried", False)
    monkeypatch.setattr(uc_kick, "_library", None)
    monkeypatch.setattr(uc_kick, "fallback_reason", None)
    monkeypatch.setenv(uc_kick.ENV_CHOICE, "c")


def runs_exactly() -> None:
    with Machine(vcpus=2, memory_mib=1, engine="emulated") as m:
        m.load(programs.mmio_counter(iterations=2000, read_every=4), mode="protected")
        m.start()
        assert m.wait(20) == 0
        assert m.results(1) == {"mmio_writes": 2000, "mmio_reads": 500, "mismatches": 0}


def test_it_is_built_into_the_cache_and_used(fresh_build, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert uc_kick.c_hook() is not None and uc_kick.describe() == "C (uc_kick.c)"
    (library,) = (tmp_path / "kvmlab").glob("uc_kick-*.so")
    assert library.stat().st_mode & 0o022 == 0
    runs_exactly()


def test_a_cache_folder_others_can_write_is_not_trusted(fresh_build, monkeypatch, tmp_path):
    (tmp_path / "kvmlab").mkdir()
    (tmp_path / "kvmlab").chmod(0o777)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert uc_kick.c_hook() is None
    assert "not this user's own folder" in uc_kick.describe()
    runs_exactly()


def test_an_unusable_cache_falls_back_to_the_python_check(fresh_build, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    assert uc_kick.c_hook() is None and uc_kick.describe().startswith("Python (cannot build or load")
    runs_exactly()

"""The course as a static site (MkDocs + mkdocs-jupyter, ``./kit site``): it builds with every
notebook executed here, in strict mode (a broken link between pages fails the build), every
relative link and asset in the built pages exists, and the build leaves nothing behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kvm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"""(?:href|src)=["']([^"'#?]+)""")


def _tracked_state() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "notebooks"], cwd=ROOT, capture_output=True, text=True).stdout


def _broken_links(site: Path) -> list[str]:
    broken = []
    for page in site.rglob("*.html"):
        for target in LINK.findall(page.read_text(errors="replace")):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("//"):
                continue  # another site (checked by people, not offline CI), or mailto:
            resolved = (site / target.lstrip("/")) if target.startswith("/") else (page.parent / target)
            if resolved.is_dir():
                resolved = resolved / "index.html"
            if not resolved.exists():
                broken.append(f"{page.relative_to(site)} -> {target}")
    return broken


def test_the_course_site_builds_with_every_notebook_run_and_no_broken_link(tmp_path):
    before = _tracked_state()
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    notebooks = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    for name in notebooks:
        assert (site / name / "index.html").exists(), f"no page for {name}"
    first = (site / "00-the-kvm-api" / "index.html").read_text()
    assert "KVM_GET_API_VERSION -&gt; 12" in first and "Machines run on real KVM" in first, "executed on real KVM, outputs kept"
    assert "application/vnd.jupyter.widget-view+json" in (site / "03-mmio-exits" / "index.html").read_text(), "widget snapshots kept"
    assert "The kvmlab course" in (site / "index.html").read_text()
    assert _broken_links(site) == []
    assert _tracked_state() == before, "building the site changed or left files in notebooks/"


def test_the_link_check_finds_a_broken_link(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "index.html").write_text('<a href="../b/">b</a> <img src="../missing.png"> <a href="https://x.org/">x</a>')
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "index.html").write_text("")
    assert _broken_links(tmp_path) == ["a/index.html -> ../missing.png"]

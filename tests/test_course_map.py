"""notebooks/README.md, the course map, lists every notebook in order with its prose word count,
and the counts are the notebooks' own (so the table cannot drift from the course)."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
ROW = re.compile(r"^\|\s*\[(?P<name>[0-9]{2}b?)[^\]]*\]\((?P<file>[^)]+\.ipynb)\)\s*\|.*\|\s*(?P<words>[0-9,]+)\s*\|\s*$")


def prose_words(path: Path) -> int:
    """Words of prose: the markdown cells, code blocks inside them included, code cells not."""
    notebook = nbformat.read(path, as_version=4)
    return sum(len(re.findall(r"[A-Za-z0-9_'’.-]+", cell.source)) for cell in notebook.cells if cell.cell_type == "markdown")


def map_rows() -> dict[str, int]:
    rows = {}
    for line in (NOTEBOOKS / "README.md").read_text().splitlines():
        match = ROW.match(line)
        if match:
            rows[match["file"]] = int(match["words"].replace(",", ""))
    return rows


def test_the_map_lists_every_notebook_in_order():
    assert list(map_rows()) == sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))


def test_the_word_counts_are_the_notebooks_own():
    actual = {p.name: prose_words(p) for p in sorted(NOTEBOOKS.glob("*.ipynb"))}
    assert map_rows() == actual, "update notebooks/README.md's word counts: " + ", ".join(f"{n}: {w:,}" for n, w in actual.items())


def test_the_total_is_given_and_right():
    total = sum(prose_words(p) for p in NOTEBOOKS.glob("*.ipynb"))
    assert f"**{total:,} words**" in (NOTEBOOKS / "README.md").read_text()

"""The README's "Write your own program" lists every constant a program gets, with its real
value (issue 11, part 8): the list is generated from ``kvmlab.guest.constants`` and checked
here against ``Machine.layout()`` and against what a loaded program really assembles with."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from kvmlab import ConfigError, Machine, programs
from kvmlab.guest.constants import constants, layout_markdown

README = Path(__file__).resolve().parents[1] / "README.md"
ROW = re.compile(r"^\| `([A-Z_]+)` \| (`0x[0-9a-f]+`|`\d+`|set at load) \|", re.MULTILINE)


def _readme_rows() -> dict[str, str]:
    text = README.read_text()
    section = text[text.index("### Write your own program") :]
    return {name: value.strip("`") for name, value in ROW.findall(section[: section.index("<!-- end of generated table -->")])}


def test_the_readme_table_is_the_generated_one():
    assert layout_markdown() in README.read_text(), (
        "README.md's table of constants is out of date: paste kvmlab.guest.constants.layout_markdown() in its place"
    )


def test_the_readme_lists_machine_layout_with_its_values():
    rows = _readme_rows()
    with Machine(vcpus=1, memory_mib=1) as m:
        layout = m.layout()
    for name, value in layout.items():
        assert rows.get(name) == f"{value:#x}", f"README: {name} should be {value:#x}"
    assert set(rows) - set(layout) == {"BITS", "NVCPUS", "RESULTS", "RESULTS_STRIDE"}, "what only loading decides"


@pytest.mark.parametrize("mode, bits", [("real", 16), ("long", 64)])
def test_a_program_gets_every_listed_constant_with_its_value(mode, bits):
    """Assemble ``.long NAME`` for every name in the README: the machine code holds the values
    the program really sees (an unknown name would not assemble)."""
    names = list(_readme_rows())
    source = "\n".join(f".long {name}" for name in names)
    with Machine(vcpus=2, memory_mib=1) as m:
        loaded = m.load(programs.from_source(source, name="constants.asm"), mode=mode)
        expected = {**m.layout(), **{c.name: c.value for c in constants(mode, 2)}}
    seen = dict(zip(names, struct.unpack(f"<{len(names)}I", loaded.code)))
    assert seen == expected and seen["BITS"] == bits and seen["NVCPUS"] == 2


def test_from_source_names_its_results():
    program = programs.from_source("hlt", results=("written", "polls"))
    assert program.results_fields == ("written", "polls")
    with pytest.raises(ConfigError, match="up to 4 names"):
        programs.from_source("hlt", results=("a", "b", "c", "d", "e"))

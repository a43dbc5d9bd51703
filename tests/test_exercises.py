"""Each checked exercise, run with the reference answer (passes) and with the usual wrong
answers (fails, with the hint aimed at that mistake), on both engines."""

from __future__ import annotations

from kvmlab import exercises
from kvmlab.kvm.constants import IoDirection


def _io(records, keep):
    return b"".join(r.fields["data"] for r in records if r.reason == "IO" and keep(r))


def test_the_reference_answer_passes(engine):
    verdict = exercises.check_serial_bytes(exercises.reference_serial_bytes, engine=engine)
    assert verdict and str(verdict).startswith("Right. The guest printed")


def test_every_out_exit_is_the_port_mistake(engine):
    verdict = exercises.check_serial_bytes(lambda rs: _io(rs, lambda r: r.fields["direction"] == IoDirection.OUT), engine=engine)
    assert not verdict and "POST codes written to port 0x80" in verdict.message


def test_every_exit_at_the_port_is_the_direction_mistake(engine):
    verdict = exercises.check_serial_bytes(lambda rs: _io(rs, lambda r: r.fields["port"] == 0x3F8), engine=engine)
    assert not verdict and "IN exits carry what the device answered" in verdict.message


def test_a_crash_in_the_answer_is_a_hint_not_a_traceback(engine):
    verdict = exercises.check_serial_bytes(lambda rs: rs[0].missing, engine=engine)
    assert not verdict and "raised AttributeError" in verdict.message


def test_a_guess_cannot_pass(engine):
    """The secret is drawn per check: a constant answer fails most of the time."""
    passes = sum(bool(exercises.check_serial_bytes(lambda rs: b"vmexit", engine=engine)) for _ in range(6))
    assert passes < 6


def test_the_verdict_shows_as_html():
    html = exercises.Verdict(False, "a hint")._repr_html_()
    assert "Not yet." in html and "a hint" in html and "--jp-" in html

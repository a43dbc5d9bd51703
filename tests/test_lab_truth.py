"""Issue 11, parts 1-3, in the Lab's views: states, rates and the log after a stop and close;
a crash logged once and inspectable; an Export that works the first time. On both engines.
(The same in a real browser: tests/test_browser.py.)"""

from __future__ import annotations

import time

from kvmlab import programs
from kvmlab.widgets import Lab


def settle(view, timeout: float = 10.0) -> None:
    assert view.session.wait_idle(timeout), "a lab action did not finish"
    view.session.refresh_now()


def texts(lab) -> list[str]:
    return [m.text for m in lab.session.messages]


def test_stop_and_close_in_one_cell_show_final_states_zero_rates_and_log_both(engine, machines):
    """Before: the rates kept the last interval's figures (tens of thousands per second) as
    "final figures", and neither the stop nor the close reached the log."""
    m = machines(engine=engine, vcpus=2, sample_hz=20)
    m.load(programs.mmio_counter(iterations=0), mode="protected")
    lab = Lab(m)
    lab.control.all_buttons["start"].click()
    settle(lab)
    deadline = time.monotonic() + 10
    while not (lab.plot.latest_rate(0) > 0 and lab.plot.latest_rate(1) > 0) and time.monotonic() < deadline:
        time.sleep(0.05)
        lab.session.refresh_now()
    assert lab.plot.latest_rate(0) > 0, "running: the rate is live"
    m.stop()
    m.close()
    assert "machine closed" in lab.control.phase_label.value
    assert [lab.control.state_text(i) for i in range(2)] == ["Finished", "Finished"]
    assert all("Running" not in label.value for label in lab.control.state_labels)
    assert "machine stopped: stopped by the controller — exit code 0" in texts(lab)
    assert texts(lab)[-1].startswith("machine closed")
    assert "machine closed" in lab.control.messages.value
    for vcpu in range(2):
        assert lab.plot.latest_rate(vcpu) == 0
        assert f"<span class='kvmlab-rate-{vcpu}' data-rate='0.0'>" in lab.plot.rates.value
    totals = m.metrics.totals()
    written = int(totals.at["0", "exit_mmio_write"])
    assert written > 0 and f"0 MMIO writes / s ({written:,} in all)" in lab.plot.rates.value, "the totals stay"
    lab.close()


def test_a_triple_fault_is_an_error_logged_once_and_its_final_state_inspectable(engine, machines):
    """Before: "SHUTDOWN (triple fault or reset), exit code 0", nothing in the log, and Save
    state disabled on the dead vCPU: no way to see where it died."""
    m = machines(engine=engine, vcpus=1, trace=True)
    m.load(programs.triple_fault(), mode="real")
    lab = Lab(m)
    lab.control.all_buttons["start"].click()
    settle(lab)
    m.wait(10)
    for _ in range(3):  # however often the model syncs, each exit is told once
        lab.session.refresh_now()
    told = [msg for msg in lab.session.messages if msg.text.startswith("vCPU 0 exited")]
    assert [(msg.level, msg.text) for msg in told] == [("error", "vCPU 0 exited: SHUTDOWN (triple fault) — exit code 3")]
    assert "machine stopped: vCPU 0: SHUTDOWN (triple fault) — exit code 3" in texts(lab)
    assert "exit code 3" in lab.control.phase_label.value
    inspector = lab.inspector
    assert inspector.save_button.disabled, "a finished vCPU takes no SaveState..."
    summary = inspector.summary.value
    assert "vCPU 0 exited: SHUTDOWN (triple fault), exit code 3" in summary, summary  # ...its final state shows instead
    assert "real mode" in summary
    code = inspector.pages["Code at RIP"].value
    assert "=&gt;" in code and "ud2" in code.split("=&gt;")[1].splitlines()[0], code
    assert "last exits" in code and "shutdown" in code
    assert "rip" in inspector.pages["Registers"].value
    m.close()
    inspector._shown = ()  # render again after close: no memory is needed any more
    inspector.refresh()
    assert "ud2" in inspector.pages["Code at RIP"].value
    lab.close()


def test_export_creates_its_default_folder_and_shows_the_paths(engine, machines, tmp_path, monkeypatch):
    """Before: the default folder ("lab-export") did not exist, so the first press failed
    with "create it first"."""
    monkeypatch.chdir(tmp_path)  # a kernel's working folder is its notebook's
    m = machines(engine=engine, vcpus=1, sample_hz=20)
    m.load(programs.hello(), mode="real")
    lab = Lab(m)
    lab.control.all_buttons["start"].click()
    settle(lab)
    m.wait(5)
    lab.export_button.click()
    settle(lab)
    folder = tmp_path / "lab-export"
    written = sorted(p.name for p in folder.iterdir())
    assert written == ["kvmlab-exits.png", "kvmlab-metrics.csv", "kvmlab-metrics.parquet", "kvmlab-totals.csv"]
    for name in written:
        assert f"<code>{folder / name}</code>" in lab.export_result.value, "absolute paths, shown in the Lab"
    assert texts(lab)[-1] == f"exported 4 files to {folder}"
    (tmp_path / "a-file").write_text("")
    lab.folder.value = str(tmp_path / "a-file")
    lab.export_button.click()
    settle(lab)
    assert "export failed" in lab.export_result.value and "is a file, not a folder" in lab.export_result.value
    lab.close()

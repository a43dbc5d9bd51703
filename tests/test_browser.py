"""End to end in a real browser: JupyterLab + headless Debian Chromium driven by Playwright.

Opens notebooks/03-mmio-exits.ipynb, runs every cell above the one that pauses every vCPU
(the notebook ends with the machine paused, for the reader to play with, then an exercise),
clicks Pause on vCPU 1 in the Lab's control panel, and checks in the page that vCPU 1 reads
Paused and its plotted rate drops to 0 while vCPU 0's does not. Every selector is
scoped to the output area, so a click can never land on the notebook's source text.
A screenshot goes to test-artifacts/.

The second test (issue 11) runs a notebook of its own that stops and closes the machine in one
cell, checks that the Lab then shows no vCPU Running, logs the stop and the close and reads
rates of 0, and that Export writes its files into a folder it creates (lab-after-close.png).

A third test looks at the Lab as a newcomer would (issue 11): the inspector's last
register rows are not hidden in a box, the plot's window fits the short run, the log keeps
its height, and the Lab is screenshotted in JupyterLab's light and dark themes
(test-artifacts/lab-*-light.png, lab-*-dark.png).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kvm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
LAB = ".jp-OutputArea-output .kvmlab-lab"
#: source text of the notebook cell that pauses every vCPU: the test runs the cells above it
PAUSE_ALL_CELL = 'all_buttons["pause"].click()'


def _require_browser():
    missing = []
    if not os.path.exists(CHROMIUM):
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        missing.append("the playwright package")
    if missing:
        message = "browser test needs " + " and ".join(missing)
        if os.environ.get("KVMLAB_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyter_lab(tmp_path):
    _require_browser()
    root = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", root)
    port = _free_port()
    config = tmp_path / "config"
    (config / "labconfig").mkdir(parents=True)
    # No "get Jupyter news?" toast over the outputs (and no network use for it).
    (config / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})
    )
    # User settings (a theme switched by a test) stay in the test's folder, not in ~/.jupyter;
    # the kernel imports the kvmlab under test (this checkout), not whichever one is installed.
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_CONFIG_DIR": str(config),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "user-settings"), "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}  # fmt: skip
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
         "--IdentityProvider.token=", "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True",
         f"--ServerApp.root_dir={root}", "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        stdout=open(tmp_path / "jupyter.log", "wb"), stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("JupyterLab did not start:\n" + (tmp_path / "jupyter.log").read_text()[-3000:])
                time.sleep(0.3)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()


BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]


@contextlib.contextmanager
def _browser_page():
    """A page of Debian's Chromium, headless, with room for the whole Lab; closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1700})
            page.set_default_timeout(60_000)
            yield page
        finally:
            browser.close()


def _open(page, url: str, notebook: str) -> None:
    """Opens ``notebook`` in JupyterLab and waits for its kernel."""
    page.goto(f"{url}/lab/tree/{notebook}")
    page.wait_for_selector(".jp-Notebook .jp-Cell")
    page.wait_for_selector("#jp-main-statusbar >> text=Idle", timeout=90_000)


def test_pause_vcpu_1_from_the_lab_in_jupyterlab(jupyter_lab):
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    with _browser_page() as page:
        _open(page, jupyter_lab, "03-mmio-exits.ipynb")

        # Select the cell that pauses every vCPU and run everything above it (vCPU 1 runs).
        page.locator(".jp-Notebook .jp-Cell", has_text=PAUSE_ALL_CELL).locator(".jp-InputPrompt").click()
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Above Selected Cell").click()

        # The notebook paused and resumed vCPU 1 itself; wait for its last cell above.
        page.wait_for_selector(".jp-OutputArea-output >> text=/\\[Running, Running\\] rounds: \\d+/", timeout=180_000)
        lab = page.locator(LAB)
        expect(lab.locator(".kvmlab-vcpu-1 .kvmlab-state")).to_contain_text("Running")
        image = lab.locator(".kvmlab-plot-image")
        before = image.get_attribute("src")

        pause = lab.locator(".kvmlab-vcpu-1 button.kvmlab-pause")
        expect(pause).to_be_enabled()
        pause.click()

        expect(lab.locator(".kvmlab-vcpu-1 .kvmlab-state")).to_contain_text("Paused", timeout=15_000)
        expect(lab.locator(".kvmlab-vcpu-0 .kvmlab-state")).to_contain_text("Running")
        expect(lab.locator(".kvmlab-messages")).to_contain_text("vCPU 1: paused")
        # Rates are per sample interval: wait for a whole interval with vCPU 1 paused.
        expect(lab.locator(".kvmlab-rate-1")).to_have_attribute("data-rate", "0.0", timeout=15_000)
        rate_0 = float(lab.locator(".kvmlab-rate-0").get_attribute("data-rate"))
        # About 50,000 exits/s on an idle host; the claim is only "not stopped".
        assert rate_0 > 100, f"vCPU 0 kept running: {rate_0} exits/s"
        assert image.get_attribute("src") != before, "the plot was redrawn"
        expect(lab.locator(".kvmlab-vcpu-1 button.kvmlab-resume")).to_be_enabled()
        expect(pause).to_be_disabled()

        time.sleep(1.5)  # let the plot show vCPU 1 flat for a moment
        lab.screenshot(path=str(ARTIFACTS / "lab.png"))
        page.screenshot(path=str(ARTIFACTS / "jupyterlab.png"), full_page=False)


#: the notebook the second test runs: a Lab, a start, then stop and close in one cell
TRUTH_CELLS = [
    "import time\n"
    "from kvmlab import Machine, programs\n"
    "from kvmlab.widgets import Lab\n"
    "m = Machine(vcpus=2, memory_mib=2, sample_hz=10)\n"
    "m.load(programs.mmio_counter(iterations=0), mode='protected')\n"
    "lab = Lab(m)\n"
    "lab",
    "lab.control.all_buttons['start'].click()\n"
    "lab.session.wait_idle()\n"
    "time.sleep(2)\n"
    "print('live rates:', [round(lab.plot.latest_rate(i)) for i in range(2)])",
    "m.stop(); m.close()\n"
    "print('after close:', m.states)",
]


def _write_notebook(path: Path, cells: list[str]) -> None:
    notebook = {
        "cells": [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": source} for source in cells],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(notebook, indent=1))


def test_after_stop_and_close_the_lab_tells_the_truth_and_exports(jupyter_lab, tmp_path):
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    root = tmp_path / "notebooks"  # the fixture's server serves this folder
    _write_notebook(root / "lab-truth.ipynb", TRUTH_CELLS)
    with _browser_page() as page:
        _open(page, jupyter_lab, "lab-truth.ipynb")
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel").get_by_text("Run All Cells", exact=True).click()
        page.wait_for_selector(".jp-OutputArea-output >> text=/after close: \\[Finished, Finished\\]/", timeout=180_000)

        lab = page.locator(LAB)
        expect(lab.locator(".kvmlab-phase, div", has_text="machine closed").first).to_be_visible()
        for vcpu in (0, 1):
            state = lab.locator(f".kvmlab-vcpu-{vcpu} .kvmlab-state")
            expect(state).to_have_text("■ Finished")  # the state badge: symbol and word
            assert "Running" not in state.inner_text()
            expect(lab.locator(f".kvmlab-rate-{vcpu}")).to_have_attribute("data-rate", "0.0")
            expect(lab.locator(f".kvmlab-rate-{vcpu}")).to_contain_text("0 MMIO writes / s (")
        messages = lab.locator(".kvmlab-messages")
        expect(messages).to_contain_text("machine stopped: stopped by the controller — exit code 0")
        expect(messages).to_contain_text("machine closed")

        export = lab.locator("button.kvmlab-export")
        expect(export).to_be_enabled()
        export.click()
        folder = root / "lab-export"
        result = lab.locator(".kvmlab-export-result")
        expect(result).to_contain_text("written:", timeout=30_000)
        expect(result).to_contain_text(str(folder / "kvmlab-metrics.csv"))
        written = sorted(path.name for path in folder.iterdir())
        assert {"kvmlab-exits.png", "kvmlab-metrics.csv", "kvmlab-totals.csv"} <= set(written), written
        expect(messages).to_contain_text(f"exported {len(written)} files to {folder}")

        lab.screenshot(path=str(ARTIFACTS / "lab-after-close.png"))
        page.screenshot(path=str(ARTIFACTS / "jupyterlab-after-close.png"), full_page=False)


#: JS: is ``element`` clipped by any ancestor inside the Lab that scrolls or hides overflow?
#: Returns the first such ancestor's classes, or "" when nothing cuts it.
CLIPPED_BY = """(element) => {
  const rect = element.getBoundingClientRect();
  for (let node = element.parentElement; node && !node.classList.contains('kvmlab-lab'); node = node.parentElement) {
    const style = getComputedStyle(node);
    if (style.overflowY === 'visible' && style.overflowX === 'visible') continue;
    const box = node.getBoundingClientRect();
    if (rect.top < box.top - 1 || rect.bottom > box.bottom + 1) return node.className || node.tagName;
  }
  return '';
}"""


def _run_notebook_up_to_the_pause(page, url: str) -> None:
    """Runs the cells above the one that pauses every vCPU: both vCPUs run."""
    _open(page, url, "03-mmio-exits.ipynb")
    page.locator(".jp-Notebook .jp-Cell", has_text=PAUSE_ALL_CELL).locator(".jp-InputPrompt").click()
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Above Selected Cell").click()
    page.wait_for_selector(".jp-OutputArea-output >> text=/\\[Running, Running\\] rounds: \\d+/", timeout=180_000)


def _lab_tab(lab, name: str):
    return lab.locator(".lm-TabBar-tab", has_text=name).first


def test_the_lab_as_a_newcomer_sees_it_in_light_and_dark(jupyter_lab):
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    with _browser_page() as page:
        _run_notebook_up_to_the_pause(page, jupyter_lab)
        lab = page.locator(LAB)

        # The plot's window fits the run (a few seconds so far), not a fixed 30 s.
        window = lab.locator(".kvmlab-rates [data-window]")
        expect(window).to_have_count(1, timeout=15_000)
        span = float(window.get_attribute("data-window"))
        assert 1 <= span <= 15, f"a run of a few seconds is plotted over {span} s"

        # Enabled and disabled buttons differ by more than a shade: solid against dashed.
        enabled = lab.locator(".kvmlab-vcpu-1 button.kvmlab-pause")
        disabled = lab.locator(".kvmlab-vcpu-1 button.kvmlab-resume")
        expect(disabled).to_be_disabled()
        style = lambda b: b.evaluate("b => getComputedStyle(b).borderTopStyle")  # noqa: E731
        assert (style(enabled), style(disabled)) == ("solid", "dashed")
        expect(lab.locator(".kvmlab-vcpu-1 .kvmlab-state")).to_contain_text("▶ Running")

        # Pause and save vCPU 1 from the control panel; the log keeps its height.
        log = lab.locator(".kvmlab-messages")
        plot_top = lambda: lab.locator(".kvmlab-plot-image").bounding_box()["y"] - lab.bounding_box()["y"]  # noqa: E731 (the page may scroll)
        plot_before = plot_top()
        log_height = log.bounding_box()["height"]
        enabled.click()
        expect(lab.locator(".kvmlab-vcpu-1 .kvmlab-state")).to_contain_text("❚❚ Paused", timeout=15_000)
        save = lab.locator(".kvmlab-vcpu-1 button.kvmlab-save-state")
        expect(save).to_be_enabled()
        save.click()
        expect(log).to_contain_text("vCPU 1: state saved", timeout=15_000)
        assert log.bounding_box()["height"] == log_height, "the log keeps its height"
        assert plot_top() == plot_before, "a new message does not push the plot down"
        time.sleep(1.0)
        lab.screenshot(path=str(ARTIFACTS / "lab-exits-light.png"))

        # The inspector followed vCPU 1, and shows its registers down to rflags.
        _lab_tab(lab, "CPU inspector").click()
        inspector = lab.locator(".kvmlab-inspector")
        expect(inspector.locator(".kvmlab-inspector-summary")).to_contain_text("vCPU 1:")
        inspector.locator(".lm-TabBar").first.evaluate("e => e.scrollIntoView({block: 'start'})")  # the inspector's top at the top
        registers = inspector.locator(".kvmlab-inspector-registers")
        for name in ("r15", "rip", "rflags"):
            row = registers.locator("table").first.locator("tr", has=page.locator("th", has_text=re.compile(f"^{name}$")))
            expect(row).to_be_visible()
            assert row.evaluate(CLIPPED_BY) == "", f"the {name} row is cut off by a box"
        rflags = registers.locator("table").first.locator("tr", has=page.locator("th", has_text=re.compile("^rflags$")))
        box = rflags.bounding_box()
        assert box["y"] >= 0 and box["y"] + box["height"] <= 1700, "the rflags row is on screen"
        hit = page.evaluate("([x, y]) => document.elementFromPoint(x, y).closest('tr')?.textContent", [box["x"] + 10, box["y"] + box["height"] / 2])
        assert hit and "rflags" in hit, f"nothing covers the rflags row (found {hit!r})"
        lab.screenshot(path=str(ARTIFACTS / "lab-inspector-light.png"))
        _lab_tab(inspector, "Code at RIP").click()
        expect(inspector.locator(".kvmlab-inspector-code-at-rip")).to_contain_text("end of the loaded program")

        # JupyterLab's dark theme (Settings > Theme), kept in the test's settings folder.
        page.locator(".lm-MenuBar-itemLabel", has_text="Settings").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Theme").first.hover()
        page.locator(".lm-Menu-itemLabel", has_text="JupyterLab Dark").first.click()
        page.wait_for_selector("body[data-jp-theme-light='false']", state="attached")
        time.sleep(1.0)  # the theme's stylesheet settles
        _lab_tab(inspector, "Registers").click()
        lab.screenshot(path=str(ARTIFACTS / "lab-inspector-dark.png"))
        colour = lambda loc: loc.evaluate("e => getComputedStyle(e).color")  # noqa: E731
        text, background = colour(inspector.locator(".kvmlab-inspector-summary")), page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert text != background and text.startswith(("rgba(255, 255, 255", "rgb(255")), f"light text on the dark page, not {text} on {background}"
        _lab_tab(lab, "Exits").click()
        time.sleep(0.5)
        lab.screenshot(path=str(ARTIFACTS / "lab-exits-dark.png"))


#: the notebook of the interrupts test: a Lab on the interrupt-driven ping-pong, started
IRQ_CELLS = [
    "import time\n"
    "from kvmlab import Machine, programs\n"
    "from kvmlab.widgets import Lab\n"
    "m = Machine(vcpus=2, memory_mib=2, sample_hz=10)\n"
    "m.load(programs.mailbox_irq(rounds=0), mode='long')\n"
    "lab = Lab(m)\n"
    "lab",
    "lab.control.all_buttons['start'].click()\n"
    "lab.session.wait_idle()\n"
    "time.sleep(1)\n"
    "print('irq rounds:', m.results(0)['rounds'] > 0)",
]


def test_raise_irq_from_the_lab_and_watch_the_interrupts_plot(jupyter_lab, tmp_path):
    """Issue 13: the Lab's Raise IRQ button raises the mailbox's interrupt at a vCPU, and the
    plot's "interrupts" preset shows injections and wake-ups (test-artifacts/lab-interrupts.png)."""
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    _write_notebook(tmp_path / "notebooks" / "lab-irq.ipynb", IRQ_CELLS)
    with _browser_page() as page:
        _open(page, jupyter_lab, "lab-irq.ipynb")
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel").get_by_text("Run All Cells", exact=True).click()
        page.wait_for_selector(".jp-OutputArea-output >> text=/irq rounds: True/", timeout=180_000)
        lab = page.locator(LAB)
        raise_1 = lab.locator(".kvmlab-vcpu-1 button.kvmlab-raise-irq")
        expect(raise_1).to_be_enabled(timeout=15_000)  # the guest wrote its vector to IRQ_VECTOR
        lab.locator(".kvmlab-presets button", has_text="interrupts").click()
        expect(lab.locator(".kvmlab-rates")).to_contain_text("interrupts injected / s", timeout=15_000)
        rate = lambda: float(lab.locator(".kvmlab-rate-1").get_attribute("data-rate"))  # noqa: E731
        deadline = time.monotonic() + 15
        while rate() <= 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert rate() > 0, "vCPU 1 takes interrupts while the game runs"

        lab.locator(".kvmlab-vcpu-0 button.kvmlab-pause").click()  # vCPU 0 stops playing
        expect(lab.locator(".kvmlab-vcpu-0 .kvmlab-state")).to_contain_text("Paused", timeout=15_000)
        expect(lab.locator(".kvmlab-vcpu-1 .kvmlab-state")).to_contain_text("halted", timeout=15_000)
        raise_1.click()
        expect(lab.locator(".kvmlab-messages")).to_contain_text("vCPU 1: mailbox interrupt raised", timeout=15_000)
        time.sleep(1.5)  # let the plot show the rates fall, and the one interrupt
        lab.screenshot(path=str(ARTIFACTS / "lab-interrupts.png"))

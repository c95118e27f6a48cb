"""The dashboard in a real browser: `streamlit run app.py` on 127.0.0.1, driven by Playwright
through Debian's headless Chromium (setup.sh --browser installs it; Playwright cannot
download its own browser here).  Screenshots go to tests/artifacts/."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SERVE_TIMEOUT_S = 60
RENDER_TIMEOUT_MS = 90_000

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(),
                                 reason="no /usr/bin/chromium (run ./setup.sh --browser)")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVE_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"streamlit exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health",
                                        timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        time.sleep(0.25)
    pytest.fail(f"streamlit did not serve within {SERVE_TIMEOUT_S} s: "
                f"{log.read_text()[-2000:]}")


@contextlib.contextmanager
def serving(cmd: list, port: int, name: str):
    """Run cmd (a server on port) in its own process group; always kill the group."""
    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS / f"{name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_healthy(port, proc, log)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def chart_data(page, trace_name: str):
    """(x, y) of the first plotly trace called trace_name on the page (plotly keeps the
    rendered data on its graph div as .data)."""
    return page.evaluate("""(name) => {
        for (const gd of document.querySelectorAll('.js-plotly-plot')) {
            for (const t of (gd.data || [])) {
                if (t.name === name) return [Array.from(t.x || []), Array.from(t.y || [])];
            }
        }
        return null;
    }""", trace_name)


def wait_idle(page) -> None:
    """Until Streamlit's script run is over (its status widget says nothing) and the five
    charts are drawn."""
    page.wait_for_timeout(300)           # the rerun's request reaches the server first
    page.wait_for_function(
        "!document.querySelector('[data-testid=\"stStatusWidget\"]')?.innerText"
        ".match(/Running|Connecting/) && "
        "[...document.querySelectorAll('.js-plotly-plot')]"
        ".filter(gd => gd.querySelector('.main-svg')).length >= 5",
        timeout=RENDER_TIMEOUT_MS)


def screenshot(page, name: str) -> Path:
    """The whole page: Streamlit scrolls inside its own container, so make the viewport as
    tall as the content instead of using full_page."""
    height = page.evaluate("Math.max(...[...document.querySelectorAll('section, div')]"
                           ".map(e => e.scrollHeight))")
    page.set_viewport_size({"width": 1500, "height": min(max(int(height), 1100), 12000)})
    page.wait_for_timeout(500)
    path = ARTIFACTS / name
    page.screenshot(path=str(path))
    page.set_viewport_size({"width": 1500, "height": 1100})
    return path


# The page after the switch to the static plan: the timeline's rows are pipeline stages, no
# pool trace is left, and the TPOT headline differs from `before`.
UPDATED = """(before) => {
    const traces = [...document.querySelectorAll('.js-plotly-plot')].flatMap(gd => gd.data || []);
    const base = traces.find(t => t.name === 'base compute');
    const tpot = [...document.querySelectorAll('[data-testid="stMetric"]')]
        .find(e => e.innerText.includes('TPOT (ms)'));
    return base && Array.from(base.y).includes('stage0')
        && !traces.some(t => t.name === 'pool compute')
        && tpot && tpot.querySelector('[data-testid="stMetricValue"]').innerText.trim()
            !== before.trim();
}"""


def metric_value(page, label: str) -> str:
    metric = page.locator('[data-testid="stMetric"]', has_text=label).first
    return metric.locator('[data-testid="stMetricValue"]').inner_text()


def test_dashboard_in_chromium():
    from playwright.sync_api import sync_playwright

    port = free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
           "--server.port", str(port), "--server.address", "127.0.0.1",
           "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none"]     # watching the repo (.venv too) is costly
    with serving(cmd, port, "streamlit"), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(f"http://127.0.0.1:{port}/", timeout=RENDER_TIMEOUT_MS)
            # The page loads and every chart renders as plotly SVG: TPOT, TPS, timeline,
            # memory, heatmap.
            wait_idle(page)
            assert page.locator(".js-plotly-plot").count() >= 5
            assert page.get_by_text("fa-pool: what if I add an attention pool?").count() == 1
            assert page.locator('[data-testid="stException"]').count() == 0
            assert page.get_by_text("paper claim").count() > 0     # labels in the SVG
            # the serving view: the selected plan under the sidebar's arrival rate
            assert page.get_by_text("Serving under load", exact=False).count() >= 1
            assert metric_value(page, "p99 TTFT (ms)") not in ("", "-")
            gantt_before = chart_data(page, "base compute")
            tpot_before = metric_value(page, "TPOT (ms)")
            assert gantt_before and set(gantt_before[1]) >= {"base"}
            assert any(str(u).startswith("pool") for u in chart_data(page, "pool compute")[1])
            assert screenshot(page, "dashboard.png").stat().st_size > 10_000

            # One widget change: the selected plan becomes the static baseline.  The timeline
            # now shows pipeline stages, and the headline TPOT changes.
            page.locator('[data-testid="stSidebar"]').get_by_text(
                "static TP x PP", exact=True).click()
            page.wait_for_function(UPDATED, arg=tpot_before, timeout=RENDER_TIMEOUT_MS)
            wait_idle(page)
            gantt_after = chart_data(page, "base compute")
            assert set(gantt_after[1]) == {"stage0", "stage1"}
            assert chart_data(page, "pool compute") is None
            assert metric_value(page, "TPOT (ms)") != tpot_before
            screenshot(page, "dashboard_static.png")
        finally:
            browser.close()


def test_fapool_dashboard_serves():
    """`fapool dashboard --headless` starts the same app: it answers Streamlit's health check."""
    port = free_port()
    cmd = [sys.executable, "-c", "import sys; from planner.cli import main; sys.exit(main())",
           "dashboard", "--headless", "--port", str(port), "--address", "127.0.0.1"]
    with serving(cmd, port, "fapool_dashboard") as proc:
        assert proc.poll() is None

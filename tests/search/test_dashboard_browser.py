"""The dashboard in a real browser: headless Chromium (Debian's ``chromium``) driven over the
DevTools protocol loads the page while a real tiny search runs in a subprocess, and again once it
has finished, and checks that the plots rendered (plotly's ``svg.main-svg`` is in the DOM), that
the trial table lists the running and the failed trial, and that the console stayed clean.

Screenshots go to ``build/test-artifacts/dashboard/`` (git-ignored): look at them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from vitprune.search.dashboard import make_server
from vitprune.search.rundir import RunDir

aiohttp = pytest.importorskip("aiohttp", reason="the DevTools client needs aiohttp (ray[default] has it)")

pytestmark = pytest.mark.ray  # the search subprocess starts a private Ray

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts" / "dashboard"
FLAGS = (
    "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking "
    "--disable-component-update --disable-sync --hide-scrollbars --remote-debugging-port=0"
).split()
PLOTS = ("cost-plot", "progress-plot", "structure-plot")

# A real search of 5 tiny trials: trial 1 raises, trial 3 waits until the test has looked at the
# live page (it creates `release` in the run directory), so that one trial is surely running.
SEARCH = """
import sys, time
from pathlib import Path
from vitprune.search.lifecycle import Search
from vitprune.search.report import TRIAL_KEY
from vitprune.search.spec import SearchSpec
from vitprune.search.trainable import run_trial

SPEC = {spec}


def trainable(config, plan):
    if config[TRIAL_KEY] == 1:
        raise RuntimeError("injected failure")
    if config[TRIAL_KEY] == 3:
        deadline = time.time() + 240
        while not (plan.run.root / "release").exists() and time.time() < deadline:
            time.sleep(0.5)
    run_trial(config, plan)


Search(SearchSpec.model_validate(SPEC), run_dir=sys.argv[1], progress=print).run(trainable)
"""
SPEC = {
    "name": "browser",
    "model": {"name": "vitprune_digits_vit", "args": {"depth": 2, "embed_dim": 32, "num_heads": 2}},
    "dense_training": {"epochs": 10},
    "budget": {"macs": "50%", "batch_size": 4},
    "space": {"dimensions": ["heads", "qk", "v", "mlp", "tokens", "depth"]},
    "finetune": {"epochs": 1, "steps": 3},
    "trials": {"total": 5, "concurrent": 2, "initial": 3, "max_failures": 0},
    "generation": {"num_restarts": 2, "raw_samples": 64, "maxiter": 20},
    "criteria": {"calibration_batches": 1},
    "storage": {"enabled": False},
}


class DevTools:
    """One page of a headless Chromium, over the DevTools protocol: navigate, evaluate, capture
    the console's errors and screenshots."""

    def __init__(self, websocket: Any) -> None:
        self.websocket = websocket
        self.errors: list[str] = []
        self._next = 0
        self._pending: dict[int, asyncio.Future] = {}
        self._reader = asyncio.create_task(self._read())

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        self._next += 1
        future = asyncio.get_running_loop().create_future()
        self._pending[self._next] = future
        await self.websocket.send_json({"id": self._next, "method": method, "params": params})
        reply = await asyncio.wait_for(future, 60)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, *, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not await self.evaluate(expression):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {expression}")
            await asyncio.sleep(0.25)

    async def open(self, url: str) -> None:
        self.errors.clear()
        await self.send("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete'")

    async def screenshot(self, path: Path) -> None:
        height = await self.evaluate("document.documentElement.scrollHeight")
        await self.send(
            "Emulation.setDeviceMetricsOverride", width=1400, height=height, deviceScaleFactor=1, mobile=False
        )
        shot = await self.send("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))
        await self.send(
            "Emulation.setDeviceMetricsOverride", width=1400, height=1000, deviceScaleFactor=1, mobile=False
        )

    async def _read(self) -> None:
        async for message in self.websocket:
            data = json.loads(message.data)
            if "id" in data:
                self._pending.pop(data["id"]).set_result(data)
            elif data.get("method") == "Runtime.exceptionThrown":
                details = data["params"]["exceptionDetails"]
                self.errors.append(details.get("exception", {}).get("description") or details.get("text"))
            elif data.get("method") == "Runtime.consoleAPICalled" and data["params"]["type"] in (
                "error",
                "assert",
            ):
                self.errors.append(
                    " ".join(str(arg.get("value", arg.get("description"))) for arg in data["params"]["args"])
                )
            elif data.get("method") == "Log.entryAdded" and data["params"]["entry"]["level"] == "error":
                self.errors.append(
                    data["params"]["entry"]["text"] + " " + data["params"]["entry"].get("url", "")
                )


class Browser:
    """A headless Chromium process with a fresh profile, ended (by its PID) when the test ends."""

    def __init__(self, profile: Path) -> None:
        profile.mkdir()
        self.process = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            assert self.process.poll() is None and time.monotonic() < deadline, "chromium did not start"
            time.sleep(0.2)
        self.port = int(port_file.read_text().split()[0])

    async def page(self, session: Any) -> DevTools:
        async with session.get(f"http://127.0.0.1:{self.port}/json/list") as response:
            target = next(t for t in await response.json() if t["type"] == "page")
        websocket = await session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
        page = DevTools(websocket)
        for domain in ("Page", "Runtime", "Log"):
            await page.send(f"{domain}.enable")
        await page.send(
            "Emulation.setDeviceMetricsOverride", width=1400, height=1000, deviceScaleFactor=1, mobile=False
        )
        return page

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _wait(condition: Any, what: str, *, timeout: float, search: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        output = Path(search.args[1]).with_name("search.out")
        assert search.poll() is None or condition(), f"the search ended before {what}:\n{_tail(output)}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{_tail(output)}"
        time.sleep(0.5)


def _tail(path: Path) -> str:
    return path.read_text()[-3000:] if path.exists() else ""


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


PLOTTED = " && ".join(f"document.querySelector('#{plot} svg.main-svg')" for plot in PLOTS)
TABLE = "[...document.querySelectorAll('#trials tbody tr')].map(tr => tr.innerText)"


@pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (`apt-get install chromium`; .ci/run installs it)"
)
def test_the_dashboard_renders_a_live_and_a_finished_search_in_chromium(tmp_path):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    run_dir = tmp_path / "run"
    script = tmp_path / "search.py"
    script.write_text(SEARCH.format(spec=repr(SPEC)))
    output = (tmp_path / "search.out").open("w")
    search = subprocess.Popen(
        [sys.executable, str(script), str(run_dir)],  # _wait finds search.out beside the script
        cwd=tmp_path,  # Ray puts the driver's folder on its workers' path: not the checkout
        stdout=output,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    browser = server = None
    try:
        browser = Browser(tmp_path / "profile")
        server = make_server(RunDir(run_dir), port=0)  # before the run directory exists: the page waits
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        asyncio.run(_check_pages(browser, url, run_dir, search))
        assert search.wait(180) == 0, _tail(tmp_path / "search.out")
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        if browser is not None:
            browser.close()
        if search.poll() is None:  # ended by its PID, with its private Ray
            search.terminate()
            search.wait(60)
        output.close()
    print(f"dashboard screenshots: {SCREENSHOTS}")


async def _check_pages(browser: Browser, url: str, run_dir: Path, search: subprocess.Popen) -> None:
    async with aiohttp.ClientSession() as session:
        page = await browser.page(session)

        # Before any trial: the phase shows, the plots say what they wait for.
        await asyncio.to_thread(
            _wait, run_dir.joinpath("phase.json").exists, "phase.json", timeout=120, search=search
        )
        await page.open(url)
        await page.wait_for("document.querySelectorAll('#phases li').length > 0")
        await page.screenshot(SCREENSHOTS / "1-preparing.png")
        assert page.errors == []

        # Live: trial 1 failed, trial 3 waits for us, at least one trial completed.
        def live() -> bool:
            progress = _json(run_dir / "progress.json") or {}
            return (
                3 in progress.get("running", [])
                and (run_dir / "trials" / "0001" / "error.txt").exists()
                and progress.get("completed", 0) >= 1
                and (run_dir / "experiment.json").exists()
            )

        await asyncio.to_thread(
            _wait, live, "a live search with a running and a failed trial", timeout=240, search=search
        )
        await page.open(url)
        await page.wait_for(PLOTTED)
        await page.wait_for(f"{TABLE}.some(text => /^3\\b[\\s\\S]*running/.test(text))")
        rows = await page.evaluate(TABLE)
        assert any(row.startswith("1") and "failed" in row and "injected failure" in row for row in rows), (
            rows
        )
        assert "trials" in await page.evaluate("document.querySelector('#phases li.current').innerText")
        await page.wait_for("state.snapshot.loaded", timeout=120)  # the dashboard has read Ax's snapshot
        await page.screenshot(SCREENSHOTS / "2-live.png")
        # A running trial's structure is the policy its point decodes to (its point is in the snapshot).
        await page.evaluate("document.querySelector('#trials tbody tr[data-trial=\"3\"]').click()")
        await page.wait_for("document.querySelector('#structure-title').innerText.includes('trial 3')")
        await page.wait_for("document.querySelector('#structure-plot svg.main-svg')")
        assert "is running" in await page.evaluate("document.querySelector('#structure-note').innerText")
        await page.screenshot(SCREENSHOTS / "3-live-running-trial.png")
        assert page.errors == []

        # Finished: every trial ended, the page updated without a reload.
        (run_dir / "release").touch()
        await asyncio.to_thread(search.wait, 180)
        await page.wait_for(
            "document.querySelector('#progress-text').innerText.includes('finished')", timeout=30
        )
        await page.open(url)
        await page.wait_for(PLOTTED)
        rows = await page.evaluate(TABLE)
        assert len(rows) == 5 and not any("running" in row for row in rows), rows
        assert any("★" in row for row in rows), rows  # the best trial is marked
        await page.screenshot(SCREENSHOTS / "4-finished.png")
        assert page.errors == []

        # The second page: Ax's analyses, computed on demand, drawn with the one plotly.js.
        await page.open(f"{url}/analyses")
        await page.wait_for("document.querySelector('#cards svg.main-svg')", timeout=180)
        await page.screenshot(SCREENSHOTS / "5-analyses.png")
        titles = await page.evaluate("[...document.querySelectorAll('#cards h2')].map(h => h.innerText)")
        text = await page.evaluate("document.body.innerText")
        assert titles and not any("Error" in title for title in titles), titles  # failed cards left out
        assert "Traceback" not in text and "**" not in text
        assert page.errors == []

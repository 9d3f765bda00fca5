"""The report on the card's real sweep (tiny model): all three forms, every run, and the HTML
opened in headless Chromium without console errors or outside requests (with a screenshot).

Chromium is Debian's package (.ci/setup-browser.sh installs it); it is driven through its
DevTools protocol over a pipe (--remote-debugging-pipe), so no driver or extra package is needed.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from src.report.__main__ import main
from tests.conftest import ROOT

pytestmark = pytest.mark.system

BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--hide-scrollbars", "--window-size=1400,1000", "--remote-debugging-pipe"]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    setup = subprocess.run([str(ROOT / ".ci" / "setup-browser.sh")], capture_output=True, text=True, timeout=900)
    found = shutil.which("chromium")
    if not found:
        pytest.skip(f"headless Chromium is not installed and could not be: {setup.stderr.strip()[-300:]}")
    return found


class DevTools:
    """A minimal DevTools-protocol client over Chromium's pipe (fd 3 in, fd 4 out, NUL-separated JSON)."""

    def __init__(self, binary: str, profile: Path):
        to_browser_r, self.to_browser = os.pipe()
        self.from_browser, from_browser_w = os.pipe()

        def wire():  # in the child: its fd 3 reads our commands, its fd 4 writes replies
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self.process = subprocess.Popen([binary, *BROWSER_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                        preexec_fn=wire, pass_fds=(3, 4), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.buffer, self.next_id, self.events = b"", 0, []

    def send(self, method: str, session: str | None = None, timeout: float = 30, **params) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self.read()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)
        raise TimeoutError(method)

    def read(self) -> dict:
        while b"\0" not in self.buffer:
            chunk = os.read(self.from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def wait_for(self, method: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while time.monotonic() < deadline:
            event = self.read()
            self.events.append(event)
            if event.get("method") == method:
                return event
        raise TimeoutError(method)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:  # noqa: BLE001 - it may already be gone
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        os.close(self.to_browser)
        os.close(self.from_browser)


def open_in_chromium(page: Path, screenshot: Path, profile: Path) -> dict:
    """Load `page`, return what the page reported, and save a full-page screenshot."""
    browser = DevTools(chromium(), profile)
    try:
        target = browser.send("Target.createTarget", url="about:blank")["targetId"]
        session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable", session)
        browser.send("Page.navigate", session, url=page.as_uri())
        browser.wait_for("Page.loadEventFired")
        checks = browser.send("Runtime.evaluate", session, returnByValue=True, expression="""({
            images: document.images.length,
            loaded: Array.from(document.images).every(i => i.complete && i.naturalWidth > 0),
            rows: document.querySelectorAll('tbody tr').length,
            headings: Array.from(document.querySelectorAll('h2')).map(h => h.textContent),
            height: document.documentElement.scrollHeight})""")["result"]["value"]
        width, height = 1400, min(int(checks["height"]), 12000)
        browser.send("Emulation.setDeviceMetricsOverride", session, width=width, height=height, deviceScaleFactor=1, mobile=False)
        shot = browser.send("Page.captureScreenshot", session, format="png", timeout=60)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        events = browser.events
    finally:
        browser.close()
    errors = [e["params"] for e in events if e.get("method") == "Runtime.exceptionThrown"]
    errors += [e["params"] for e in events if e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert")]
    errors += [e["params"]["entry"] for e in events if e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error"]
    requests = [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"
                and not e["params"]["request"]["url"].startswith("data:")]
    return {**checks, "errors": errors, "requests": requests}


def test_report_of_the_cards_sweep_in_all_three_forms(tiny_sweep, tmp_path):
    assert main([str(tiny_sweep)]) == 0
    runs = sorted(p.parent.name for p in tiny_sweep.glob("*/summary.json"))
    assert len(runs) == 4
    md = (tiny_sweep / "report.md").read_text()
    html = (tiny_sweep / "report.html").read_text()
    data = json.loads((tiny_sweep / "report.json").read_text())
    assert [r["name"] for r in data["runs"]] == runs
    assert all(r["status"] == "completed" and r["steps"] for r in data["runs"])
    for run in runs:
        assert f"\n| {run} | " in md and f"<td>{run}</td>" in html
    assert {f["name"] for f in data["factors"]} >= {"quant", "lora_r"}
    sections = ["Environment", "Verdict", "Runs", "Factor attribution", "Outcomes by factor", "Answers side by side",
                "Loss curves", "Failed, incomplete and skipped", "W&B", "Events in detail"]
    assert [line[3:] for line in md.splitlines() if line.startswith("## ")] == sections
    assert "wandb sync" in md  # the card's sweep logs to W&B offline
    plots = sorted(p.name for p in (tiny_sweep / "report_plots").glob("*.png"))
    assert plots == ["by_lora_r.png", "by_quant.png", "runs.png"]
    assert html.count("data:image/png;base64,") == len(plots)
    assert "src=\"http" not in html and "href=" not in html  # self-contained

    seen = open_in_chromium(tiny_sweep / "report.html", tmp_path / "report.png", tmp_path / "profile")
    assert seen["errors"] == []
    assert seen["requests"] == [(tiny_sweep / "report.html").as_uri()]  # nothing fetched from outside
    assert seen["images"] == len(plots) and seen["loaded"]
    assert seen["headings"] == sections
    shot = (tmp_path / "report.png").read_bytes()
    assert shot.startswith(b"\x89PNG") and len(shot) > 50_000

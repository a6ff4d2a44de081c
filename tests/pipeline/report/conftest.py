"""Headless Chromium for the report tests: installed from Debian when missing, driven over the DevTools pipe."""

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

FLAGS = (
    "--headless",
    "--no-sandbox",  # we run as root in a container; Chromium refuses to sandbox as root
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",  # containers often have a 64 MB /dev/shm
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-pipe",  # DevTools on fds 3 (in) and 4 (out): no port, no websocket client needed
)


@pytest.fixture(scope="session")
def chromium() -> str:
    """The chromium binary; as root, `apt-get install chromium` (Debian's package, with its recommended fonts) when
    it is missing. A test using it needs a timeout that fits the install: `@pytest.mark.timeout(900)`."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium is not installed and cannot be installed here (needs root and apt-get)")
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            pytest.skip(f"`{' '.join(command)}` failed: {done.stderr.strip().splitlines()[-1:]}")
    found = shutil.which("chromium")
    if not found:
        pytest.skip("apt-get installed chromium but it is not on PATH")
    return found


class DevTools:
    """A minimal Chrome DevTools Protocol client over --remote-debugging-pipe (NUL-terminated JSON messages)."""

    def __init__(self, binary: str, profile: Path, log: Path, width: int = 1280, height: int = 1000):
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def wire() -> None:
            # The child must see the pipes as exactly fds 3 and 4; go through fds >= 10 so neither clobbers the other.
            a, b = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3, inheritable=True)
            os.dup2(b, 4, inheritable=True)

        args = [binary, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"]
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log, preexec_fn=wire, pass_fds=(3, 4)
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.log_path = log
        self._next_id, self._buffer = 0, b""
        self.events: list[dict[str, Any]] = []

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no DevTools message in time")
            ready, _, _ = select.select([self._from_chrome], [], [], left)
            if ready:
                chunk = os.read(self._from_chrome, 1 << 20)
                if not chunk:
                    tail = self.log_path.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"chromium closed the DevTools pipe (exit {self.proc.poll()}):\n{tail}")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        """Call `method` and return its result; events that arrive meanwhile are kept in `events`."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30) -> dict:
        """The first event `method` (already received or arriving within `timeout`)."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for event in self.events[seen:]:
                if event.get("method") == method:
                    return event
            seen = len(self.events)
            self.events.append(self._read(deadline))

    def drain(self, seconds: float) -> None:
        """Collect events for `seconds` more (late console errors or requests)."""
        deadline = time.monotonic() + seconds
        try:
            while True:
                self.events.append(self._read(deadline))
        except TimeoutError:
            pass

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_chrome, self._from_chrome):
            os.close(fd)
        self._log.close()


class BrowserPage:
    """One tab: load a file, then ask what it logged, requested and drew."""

    def __init__(self, tools: DevTools):
        self.tools = tools
        target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = tools.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")

    def call(self, method: str, params: dict | None = None) -> dict:
        return self.tools.send(method, params, session=self.session)

    def load(self, url: str) -> None:
        self.tools.events.clear()
        self.call("Page.navigate", {"url": url})
        self.tools.wait_for("Page.loadEventFired")
        self.tools.drain(0.5)

    def _mine(self) -> list[dict[str, Any]]:
        return [e for e in self.tools.events if e.get("sessionId") == self.session]

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors (CSP violations, failed loads) since load()."""
        found = []
        for e in self._mine():
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(f"console: {[a.get('value', a.get('description')) for a in params.get('args', [])]}")
            elif method == "Runtime.exceptionThrown":
                found.append(f"exception: {params.get('exceptionDetails', {}).get('text')}")
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                found.append(f"log: {params['entry'].get('text')}")
        return found

    def requests(self) -> list[str]:
        """URLs of every request the page made since load() (data: URLs included, as Chromium reports them)."""
        return [e["params"]["request"]["url"] for e in self._mine() if e.get("method") == "Network.requestWillBeSent"]

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"evaluate: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> tuple[int, int]:
        """The whole page (not just the window) as a PNG at `path`; returns its CSS size."""
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        width, height = int(size["width"]), int(size["height"])
        clip = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
        shot = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip})
        path.write_bytes(base64.b64decode(shot["data"]))
        return width, height


@pytest.fixture
def browser(chromium: str, tmp_path: Path) -> Iterator[BrowserPage]:
    """A fresh headless Chromium with one page, closed after the test."""
    tools = DevTools(chromium, tmp_path / "chromium-profile", tmp_path / "chromium.log")
    try:
        yield BrowserPage(tools)
    finally:
        tools.close()

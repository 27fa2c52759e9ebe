"""Headless Chromium with the network blocked, driven over the DevTools protocol on a pipe.

The same flags as the archived-step-HTML check in test_runbook (no background networking, a
proxy that goes nowhere, every host name unresolvable), plus request interception: every
request the page makes for anything but ``file:`` or ``data:`` is refused and recorded in
``blocked``, so a test can assert that nothing tried to leave the machine. The protocol
runs over ``--remote-debugging-pipe`` (fds 3 and 4 in the browser, NUL-terminated JSON), so
no WebSocket client or browser-automation package is needed.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

OFFLINE_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--proxy-server=127.0.0.1:9",
    "--host-resolver-rules=MAP * ~NOTFOUND",
)
LOCAL_SCHEMES = ("file:", "data:", "about:", "chrome-error:", "blob:")


class ChromiumError(RuntimeError):
    pass


class OfflineChromium:
    """One headless Chromium and one page in it; ``open`` loads a URL and waits for its load
    event, ``evaluate`` returns a JavaScript expression's value, ``blocked`` lists every
    non-local request the page attempted (each was refused)."""

    def __init__(self, workdir: Path, timeout: float = 60.0):
        assert shutil.which("chromium"), (
            "needs Debian's chromium (scripts/ensure-system-packages installs it)"
        )
        self.timeout = timeout
        self.blocked: list[str] = []
        self._ids = itertools.count(1)
        self._replies: dict[int, queue.Queue] = {}
        self._events: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def place_pipes():  # in the child, before exec: the browser reads fd 3, writes fd 4
            a, b = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self._proc = subprocess.Popen(
            [
                "chromium",
                *OFFLINE_FLAGS,
                "--remote-debugging-pipe",
                f"--user-data-dir={workdir / 'profile'}",
                "--window-size=1280,2000",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(3, 4),
            preexec_fn=place_pipes,
            env={**os.environ, "HOME": str(workdir)},
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        target = self._call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self._call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        for method, params in (
            ("Page.enable", {}),
            ("Runtime.enable", {}),
            ("Network.enable", {}),
            ("Fetch.enable", {"patterns": [{"urlPattern": "*"}]}),
        ):
            self._call(method, session=self._session, **params)

    # protocol plumbing
    def _read(self):
        buffer = b""
        while True:
            try:
                chunk = os.read(self._from_browser, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                self._events.put(None)
                for q in list(self._replies.values()):
                    q.put({"error": {"message": "browser closed the pipe"}})
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "id" in message:
                    with self._lock:
                        waiting = self._replies.get(message["id"])
                    if waiting is not None:
                        waiting.put(message)
                else:
                    self._handle_event(message)

    def _handle_event(self, message: dict):
        method, params = message.get("method"), message.get("params", {})
        if method == "Fetch.requestPaused":
            url = params["request"]["url"]
            if url.startswith(LOCAL_SCHEMES):
                self._send("Fetch.continueRequest", requestId=params["requestId"])
            else:
                self.blocked.append(url)
                self._send(
                    "Fetch.failRequest",
                    requestId=params["requestId"],
                    errorReason="BlockedByClient",
                )
            return
        if method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            if not url.startswith(LOCAL_SCHEMES) and url not in self.blocked:
                self.blocked.append(url)
        self._events.put(message)

    def _send(self, method: str, session: str | None = None, reply: bool = False, **params) -> int:
        number = next(self._ids)
        message = {"id": number, "method": method, "params": params}
        if session is None and method.startswith("Fetch."):
            session = self._session
        if session:
            message["sessionId"] = session
        if reply:
            with self._lock:
                self._replies[number] = queue.Queue()
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        return number

    def _call(self, method: str, session: str | None = None, **params) -> dict:
        number = self._send(method, session=session, reply=True, **params)
        try:
            reply = self._replies[number].get(timeout=self.timeout)
        except queue.Empty:
            raise ChromiumError(f"{method}: no reply in {self.timeout}s") from None
        finally:
            with self._lock:
                self._replies.pop(number, None)
        if "error" in reply:
            raise ChromiumError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    # what tests use
    def open(self, url: str) -> None:
        while not self._events.empty():
            self._events.get_nowait()
        self._call("Page.navigate", session=self._session, url=url)
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChromiumError(f"{url}: no load event in {self.timeout}s")
            try:
                event = self._events.get(timeout=left)
            except queue.Empty:
                continue
            if event is None:
                raise ChromiumError("the browser went away")
            if event.get("method") == "Page.loadEventFired":
                return

    def evaluate(self, expression: str):
        result = self._call(
            "Runtime.evaluate",
            session=self._session,
            expression=expression,
            returnByValue=True,
            awaitPromise=True,
        )
        if "exceptionDetails" in result:
            raise ChromiumError(f"{expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self) -> None:
        try:
            self._send("Browser.close")
            self._proc.wait(timeout=15)
        except (OSError, subprocess.TimeoutExpired):
            self._proc.kill()
            self._proc.wait(timeout=15)
        finally:
            os.close(self._to_browser)
            self._reader.join(timeout=15)
            os.close(self._from_browser)

    def __enter__(self) -> OfflineChromium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

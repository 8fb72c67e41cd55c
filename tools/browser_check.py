"""Open every page of a built book in headless Chromium and check what a reader would see.

For each page under ``book/`` of the built site (``_build/html`` by default), served over
HTTP from 127.0.0.1 with no other network, after its JavaScript has run:

- math is typeset: no raw ``\\(``, ``\\[`` or ``\\begin{`` left in the page's text (outside
  code), and every math element holds a MathJax container;
- every ``<img>`` loaded (``naturalWidth > 0``), and no script, style sheet or font failed;
- saved widgets rendered (one widget area per saved widget view);
- no JavaScript error (uncaught errors, unhandled rejections, ``console.error``).

One Chromium runs for all the pages, driven through its DevTools protocol over a pipe
(``--remote-debugging-pipe``: JSON messages ended by a NUL byte on file descriptors 3 and 4, so
the standard library is enough). Each page loads in a tab of its own under a virtual-time
budget, as ``--virtual-time-budget`` does for one page: timers run as fast as the page allows,
and the clock waits while a file is still loading. The probe hands its result over through a
binding as soon as it has it. A Chromium per page, as before, took 27.9 s and 45.9 s of CPU
(the whole machine's) for the quick book's 12 pages without screenshots; one Chromium takes
13.7 s and 19.6 s, on the same idle 2-core machine.

It saves one screenshot per page (``_build/screenshots/<page>.png`` by default, 1280 x 1600)
and prints one line per page; the exit status is 1 if any page fails. ``make browser-check``
runs it; the tests run it on their quick build when Chromium is installed
(``apt-get install chromium``).

    python tools/browser_check.py [HTML_DIR] [--screenshots DIR | --no-screenshots] [--pages GLOB]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import functools
import http.server
import json
import os
import re
import select
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE_PREFIX = "__browser_check__"

HEAD_PROBE = """<script>
window.__probe = {errors: [], failed: []};
window.addEventListener('error', function (e) {
  var t = e.target;
  if (t && t !== window && (t.src || t.href)) { window.__probe.failed.push(t.src || t.href); }
  else { window.__probe.errors.push(String(e.message) + ' at ' + e.filename + ':' + e.lineno); }
}, true);
window.addEventListener('unhandledrejection', function (e) {
  window.__probe.errors.push('unhandled promise rejection: ' + String(e.reason && (e.reason.stack || e.reason)));
});
(function () {
  var original = console.error;
  console.error = function () {
    window.__probe.errors.push('console.error: ' + Array.prototype.map.call(arguments, String).join(' '));
    return original.apply(console, arguments);
  };
})();
if (window.PerformanceObserver) {
  new PerformanceObserver(function (list) {
    list.getEntries().forEach(function (entry) {
      if (entry.responseStatus && entry.responseStatus >= 400) { window.__probe.failed.push(entry.name); }
    });
  }).observe({type: 'resource', buffered: true});
}
</script>"""

BODY_PROBE = """<script>
window.addEventListener('load', function () {
  function visibleText(node) {
    var skip = {PRE: 1, CODE: 1, SCRIPT: 1, STYLE: 1, TEXTAREA: 1, 'MJX-ASSISTIVE-MML': 1};
    var out = [];
    var walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT, {
      acceptNode: function (n) {
        for (var p = n.parentNode; p && p !== document.body; p = p.parentNode) {
          if (skip[p.nodeName]) { return NodeFilter.FILTER_REJECT; }
        }
        return NodeFilter.FILTER_ACCEPT;
      }
    });
    while (walker.nextNode()) { out.push(walker.currentNode.nodeValue); }
    return out.join(' ');
  }
  function report() {
    var text = visibleText(document.body);
    var raw = [];
    var re = /\\\\\\(|\\\\\\[|\\\\begin\\{/g, m;
    while ((m = re.exec(text)) !== null && raw.length < 5) { raw.push(text.substr(Math.max(0, m.index - 30), 80)); }
    var maths = document.querySelectorAll('.math');
    var untypeset = 0;
    maths.forEach(function (el) {
      if (!el.querySelector('mjx-container') && el.nodeName !== 'MJX-CONTAINER') { untypeset++; }
    });
    var images = [];
    document.querySelectorAll('img').forEach(function (img) {
      images.push({src: img.getAttribute('src'), ok: img.complete && img.naturalWidth > 0});
    });
    var result = {
      mathjax: !!(window.MathJax && window.MathJax.version), mathjax_version: window.MathJax && window.MathJax.version,
      math_elements: maths.length, untypeset_math: untypeset, raw_math: raw,
      images: images,
      widget_views: document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').length,
      widgets_rendered: document.querySelectorAll(
        '.widget-subarea, .jupyter-widgets.widget-container, .jupyter-widgets-view').length,
      widget_manager: typeof window.require === 'function',
      errors: window.__probe.errors, failed: window.__probe.failed
    };
    var pre = document.createElement('pre');
    pre.id = '__probe_result';
    pre.textContent = JSON.stringify(result);
    document.body.appendChild(pre);
    if (window.__probeReport) { window.__probeReport(pre.textContent); }  // the checker's binding
  }
  var typeset = (window.MathJax && window.MathJax.startup && window.MathJax.startup.promise) || Promise.resolve();
  typeset.then(function () { setTimeout(report, 2000); },
               function (e) { window.__probe.errors.push('MathJax: ' + e); setTimeout(report, 2000); });
});
</script>"""

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--mute-audio",
    "--proxy-server=http://127.0.0.1:9",
    "--proxy-bypass-list=127.0.0.1",
]  # no network but ours


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the output to one line per page
        pass


def serve(directory: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


class DevTools:
    """One headless Chromium, driven through its DevTools protocol over a pipe (no WebSocket library needed).

    ``call`` sends a command and returns its result; events that arrive meanwhile are kept for
    ``wait_for``. Chromium's own messages (stderr) go to a file, for the error that names why it stopped.
    """

    def __init__(self, chromium: str, profile: str, log: Path):
        # the pipes' ends sit above fd 10, so that placing them on the child's 3 and 4 moves nothing else
        commands_read, self._commands = (_high(fd) for fd in os.pipe())  # Chromium reads commands on its fd 3
        self._replies, replies_write = (_high(fd) for fd in os.pipe())  # and writes replies and events on its fd 4
        self._log_path = log
        stderr = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            # posix_spawn rather than subprocess: it can put the pipes on fds 3 and 4, with no shell
            # and no Python code run between fork and exec (this process has threads)
            self.pid = os.posix_spawnp(
                chromium,
                [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
                os.environ,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                    (os.POSIX_SPAWN_DUP2, stderr, 2),
                    (os.POSIX_SPAWN_DUP2, commands_read, 3),
                    (os.POSIX_SPAWN_DUP2, replies_write, 4),
                ],
            )
        finally:
            for fd in (stderr, commands_read, replies_write):
                os.close(fd)
        self._buffer = b""
        self._last_id = 0
        self._events: list[dict] = []

    def _receive(self, timeout: float) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._replies], [], [], timeout)
            chunk = os.read(self._replies, 1 << 20) if ready else None
            if not chunk:
                why = f"sent nothing for {timeout:.0f} s" if chunk is None else "stopped"
                raise RuntimeError(f"Chromium {why}; it said: {self.said()}")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def said(self) -> str:
        """The last line Chromium wrote to stderr, or "nothing"."""
        lines = self._log_path.read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else "nothing"

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60) -> dict:
        self._last_id += 1
        message = {"id": self._last_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        try:
            os.write(self._commands, json.dumps(message).encode() + b"\0")
        except BrokenPipeError:
            raise RuntimeError(f"Chromium stopped; it said: {self.said()}") from None
        while True:
            reply = self._receive(timeout)
            if reply.get("id") == self._last_id:
                if "error" in reply:
                    raise RuntimeError(f"Chromium refused {method}: {reply['error'].get('message', reply['error'])}")
                return reply.get("result", {})
            self._events.append(reply)

    def wait_for(self, events: set[str], session: str, timeout: float) -> dict:
        """The first of ``events`` (method names) from ``session`` since the last :meth:`forget`."""
        for i, seen in enumerate(self._events):
            if seen.get("method") in events and seen.get("sessionId") == session:
                return self._events.pop(i)
        while True:
            message = self._receive(timeout)
            if message.get("method") in events and message.get("sessionId") == session:
                return message
            self._events.append(message)

    def forget(self) -> None:
        """Drop the events received so far (a page's console messages, once the next page loads)."""
        self._events.clear()

    @contextlib.contextmanager
    def tab(self, width: int = 1280, height: int = 1600) -> Iterator[str]:
        """A session on a new tab, closed on exit, with a fixed window size (that of the screenshots) and
        the binding ``window.__probeReport`` through which the probe hands over its result. A tab per
        page: what the last page left running (its virtual-time budget) cannot reach the next."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session,
        )
        self.call("Runtime.enable", session=session)  # for the binding's calls
        self.call("Runtime.addBinding", {"name": REPORT}, session)
        try:
            yield session
        finally:
            self.call("Target.closeTarget", {"targetId": target})
            self.forget()

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except RuntimeError:  # it has stopped already
            pass
        for _ in range(100):  # up to 10 s to exit, then killed
            if os.waitpid(self.pid, os.WNOHANG)[0]:
                break
            time.sleep(0.1)
        else:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self._commands)
        os.close(self._replies)


def _high(fd: int) -> int:
    """``fd`` moved to a number of 10 or more (close-on-exec, as Python's own descriptors are)."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


REPORT = "__probeReport"  # the binding the probe calls with its result (BODY_PROBE)


def probe_page(
    browser: DevTools,
    page: Path,
    html_dir: Path,
    base: str,
    budget_ms: int,
    timeout: float,
    screenshot: Path | None = None,
) -> dict:
    """Load a copy of the page with the probe scripts; return what the probe found (and save a screenshot)."""
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"(<head[^>]*>)", lambda m: m[1] + HEAD_PROBE, text, count=1)
    text = text.replace("</body>", BODY_PROBE + "</body>", 1)
    probe = page.with_name(PROBE_PREFIX + page.name)
    probe.write_text(text, encoding="utf-8")
    try:
        with browser.tab() as session:
            # the clock stands still until the page has started loading, then runs for the budget; the
            # page is done when the probe reports (2 s of the page's time after MathJax has typeset)
            browser.call("Emulation.setVirtualTimePolicy", {"policy": "pause"}, session)
            browser.call("Page.navigate", {"url": f"{base}/{probe.relative_to(html_dir).as_posix()}"}, session)
            browser.call(
                "Emulation.setVirtualTimePolicy",
                {"policy": "pauseIfNetworkFetchesPending", "budget": budget_ms},
                session,
            )
            event = browser.wait_for({"Runtime.bindingCalled", "Emulation.virtualTimeBudgetExpired"}, session, timeout)
            browser.call("Emulation.setVirtualTimePolicy", {"policy": "advance"}, session)  # frames are drawn again
            if screenshot is not None:
                shot = browser.call("Page.captureScreenshot", {"format": "png"}, session, timeout)
                screenshot.write_bytes(base64.b64decode(shot["data"]))
    finally:
        probe.unlink()
    if event["method"] != "Runtime.bindingCalled":
        return {"fatal": f"the page never finished loading (no probe result); chromium said: {browser.said()}"}
    return json.loads(event["params"]["payload"])


def problems_of(result: dict) -> list[str]:
    if "fatal" in result:
        return [result["fatal"]]
    problems = []
    if result["raw_math"]:
        problems.append(f"raw LaTeX in the text: {result['raw_math'][:2]}")
    if result["math_elements"] and not result["mathjax"]:
        problems.append("MathJax did not load")
    if result["untypeset_math"]:
        problems.append(f"{result['untypeset_math']} of {result['math_elements']} math elements not typeset")
    broken = [i["src"] for i in result["images"] if not i["ok"]]
    if broken:
        problems.append(f"{len(broken)} image(s) did not load: {broken[:3]}")
    failed = sorted({url for url in result["failed"] if not url.endswith("/favicon.ico")})  # the browser's own request
    if failed:
        problems.append(f"resources failed to load: {failed[:3]}")
    if result["widget_views"] and result["widgets_rendered"] < result["widget_views"]:
        problems.append(f"{result['widget_views']} saved widget view(s), {result['widgets_rendered']} rendered")
    if result["errors"]:
        problems.append(f"JavaScript errors: {result['errors'][:3]}")
    return problems


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html_dir", nargs="?", default=str(ROOT / "_build" / "html"))
    parser.add_argument("--screenshots", default=None, help="folder for one PNG per page (default: next to html/)")
    parser.add_argument("--no-screenshots", action="store_true", help="check the pages only, saving no PNG")
    parser.add_argument("--pages", default="book/*.html", help="pages to check, relative to HTML_DIR")
    parser.add_argument("--budget-ms", type=int, default=20000, help="virtual time for a page's scripts")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for one page before failing")
    args = parser.parse_args(argv)
    html_dir = Path(args.html_dir).resolve()
    shots = Path(args.screenshots) if args.screenshots else html_dir.parent / "screenshots"
    chromium = find_chromium()
    if chromium is None:
        print("browser check: Chromium not found (apt-get install chromium)", file=sys.stderr)
        return 2
    pages = sorted(p for p in html_dir.glob(args.pages) if not p.name.startswith(PROBE_PREFIX))
    if not pages:
        print(f"browser check: no pages match {args.pages} under {html_dir}", file=sys.stderr)
        return 2
    if not args.no_screenshots:
        shots.mkdir(parents=True, exist_ok=True)
    server, base = serve(html_dir)
    failed = 0
    with tempfile.TemporaryDirectory() as profile:
        browser = DevTools(chromium, profile, Path(profile) / "stderr.txt")
        try:
            for page in pages:
                shot = None if args.no_screenshots else shots / (page.stem + ".png")
                result = probe_page(browser, page, html_dir, base, args.budget_ms, args.timeout, shot)
                problems = problems_of(result)
                name = page.relative_to(html_dir).as_posix()
                if problems:
                    failed += 1
                    print(f"FAIL {name}: " + "; ".join(problems))
                else:
                    print(
                        f"ok   {name}: {result['math_elements']} math typeset "
                        f"(MathJax {result.get('mathjax_version', '-')}), "
                        f"{len(result['images'])} images loaded, {result['widgets_rendered']} widget areas "
                        f"for {result['widget_views']} saved views, no JS errors"
                        + ("" if shot is None else f"; screenshot {shot}")
                    )
        except RuntimeError as error:  # Chromium stopped or refused a command: the pages not yet checked fail
            print(f"FAIL: {error}", file=sys.stderr)
            return 1
        finally:
            browser.close()
            server.shutdown()
    print(f"browser check: {len(pages) - failed} of {len(pages)} pages passed")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("LC_ALL", "C.UTF-8")
    sys.exit(main(sys.argv[1:]))

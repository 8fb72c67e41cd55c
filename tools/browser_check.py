"""Open every page of a built book in headless Chromium and check what a reader would see.

For each page under ``book/`` of the built site (``_build/html`` by default), served over
HTTP from 127.0.0.1 with no other network, after its JavaScript has run:

- math is typeset: no raw ``\\(``, ``\\[`` or ``\\begin{`` left in the page's text (outside
  code), and every math element holds a MathJax container;
- every ``<img>`` loaded (``naturalWidth > 0``), and no script, style sheet or font failed;
- saved widgets rendered (one widget area per saved widget view);
- no JavaScript error (uncaught errors, unhandled rejections, ``console.error``).

It saves one screenshot per page (``_build/screenshots/<page>.png`` by default) and prints
one line per page; the exit status is 1 if any page fails. ``make browser-check`` runs it;
the tests run it on their quick build when Chromium is installed (``apt-get install chromium``).

    python tools/browser_check.py [HTML_DIR] [--screenshots DIR] [--pages GLOB]
"""

from __future__ import annotations

import argparse
import functools
import html
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
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


def _chromium(chromium: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def probe_page(chromium: str, page: Path, html_dir: Path, base: str, budget_ms: int, timeout: float) -> dict:
    """Load a copy of the page with the probe scripts; return what the probe found."""
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"(<head[^>]*>)", lambda m: m[1] + HEAD_PROBE, text, count=1)
    text = text.replace("</body>", BODY_PROBE + "</body>", 1)
    probe = page.with_name(PROBE_PREFIX + page.name)
    probe.write_text(text, encoding="utf-8")
    try:
        url = f"{base}/{probe.relative_to(html_dir).as_posix()}"
        done = _chromium(chromium, [f"--virtual-time-budget={budget_ms}", "--dump-dom", url], timeout)
    finally:
        probe.unlink()
    found = re.search(r'<pre id="__probe_result">(.*?)</pre>', done.stdout, re.DOTALL)
    if not found:
        return {
            "fatal": "the page never finished loading (no probe result); chromium said: "
            + (done.stderr.strip().splitlines() or ["nothing"])[-1]
        }
    return json.loads(html.unescape(found[1]))


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
    parser.add_argument(
        "--no-screenshots", action="store_true", help="check the pages only (a second Chromium run per page saved)"
    )
    parser.add_argument("--pages", default="book/*.html", help="pages to check, relative to HTML_DIR")
    parser.add_argument("--budget-ms", type=int, default=20000, help="virtual time for a page's scripts")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before a Chromium run is killed")
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
    try:
        for page in pages:
            result = probe_page(chromium, page, html_dir, base, args.budget_ms, args.timeout)
            problems = problems_of(result)
            shot = shots / (page.stem + ".png")
            url = f"{base}/{page.relative_to(html_dir).as_posix()}"
            if not args.no_screenshots:
                _chromium(
                    chromium,
                    [f"--virtual-time-budget={args.budget_ms}", f"--screenshot={shot}", "--window-size=1280,1600", url],
                    args.timeout,
                )
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
                    + ("" if args.no_screenshots else f"; screenshot {shot}")
                )
    finally:
        server.shutdown()
    print(f"browser check: {len(pages) - failed} of {len(pages)} pages passed")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("LC_ALL", "C.UTF-8")
    sys.exit(main(sys.argv[1:]))

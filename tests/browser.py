"""Headless-Chromium harness: open an HTML file, report how many charts rendered and every JS error.

How it works (no Python dependencies beyond the standard library):
1. The page is copied to a temp dir with a probe <script> injected as the first thing in <head>: it records
   uncaught errors, failed resources, unhandled promise rejections, console.error and console.warn, and once
   the page says it is done (our reports set body[data-render-done]; other pages: a few seconds after load)
   writes a JSON status (chart containers found / rendered with an <svg> or <canvas>, errors, warnings,
   page height) into a hidden <pre>.
2. `chromium --headless --dump-dom` runs it under a virtual-time budget (timers fast-forward, so the run
   ends in about a second when nothing is pending) and prints the final DOM, which we parse.
3. Chromium's own console log (--enable-logging=stderr) is also scanned for "Uncaught" lines, a backstop for
   errors thrown before or around the probe.
4. Optionally a second run takes a PNG (--screenshot) of the whole page height reported by the probe.

Chart containers: elements with a `data-sbif-chart` attribute (what sbif_dsl.report.html writes); pages
without them fall back to `.vega-embed` elements.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
]

PROBE = r"""<script data-sbif-probe>
(function () {
  var P = {errors: [], warnings: []};
  window.__sbifProbe = P;
  window.addEventListener('error', function (e) {
    var t = e.target, src = t && t !== window && (t.src || t.href);
    P.errors.push(src ? 'resource failed: ' + src : 'uncaught: ' + e.message +
      (e.filename ? ' (' + e.filename.split('/').pop() + ':' + e.lineno + ')' : ''));
  }, true);
  window.addEventListener('unhandledrejection', function (e) {
    var r = e.reason; P.errors.push('unhandled rejection: ' + (r && (r.message || r)));
  });
  var ce = console.error, cw = console.warn;
  var s = function (a) { return Array.prototype.map.call(a, function (x) {
    return x && x.message ? x.message : String(x); }).join(' '); };
  console.error = function () {
    P.errors.push('console.error: ' + s(arguments)); return ce.apply(console, arguments); };
  console.warn = function () {
    P.warnings.push('console.warn: ' + s(arguments)); return cw.apply(console, arguments); };
  function write(done) {
    var boxes = document.querySelectorAll('[data-sbif-chart]');
    if (!boxes.length) boxes = document.querySelectorAll('.vega-embed');
    var ok = 0, missing = [];
    boxes.forEach(function (b, i) {
      if (b.querySelector('svg, canvas')) ok++; else missing.push(b.id || ('#' + i));
    });
    var out = document.createElement('pre');
    out.id = '__sbif_probe'; out.hidden = true;
    out.textContent = JSON.stringify({
      containers: boxes.length, rendered: ok, missing: missing, page_done: done,
      page_status: document.body.dataset.renderDone ? {
        expected: +document.body.dataset.chartsExpected,
        rendered: +document.body.dataset.chartsRendered} : null,
      errors: P.errors, warnings: P.warnings,
      height: Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)});
    document.body.appendChild(out);
  }
  window.addEventListener('load', function () {
    var tries = 0;
    (function poll() {
      var done = !!(document.body && document.body.dataset.renderDone);
      if (done || tries++ > 80) { setTimeout(function () { write(done); }, 50); return; }
      setTimeout(poll, 100);
    })();
  });
})();
</script>"""

_CONSOLE = re.compile(r'CONSOLE[^\]]*\]\s*"(?P<msg>.*)", source: (?P<src>.*)$')


@dataclass
class RenderResult:
    charts: int  # chart containers on the page
    rendered: int  # containers holding an <svg> or <canvas>
    missing: list[str]  # ids of containers that did not render
    errors: list[str]
    warnings: list[str]
    page_done: bool  # the page signalled it finished embedding (sbif reports do)
    page_status: dict | None
    height: int
    screenshot: Path | None = None
    log: str = field(default="", repr=False)

    @property
    def ok(self) -> bool:
        return self.charts > 0 and self.rendered == self.charts and not self.errors


def find_chromium() -> str | None:
    """$SBIF_CHROMIUM, else the first Chromium/Chrome on PATH."""
    env = os.environ.get("SBIF_CHROMIUM")
    if env:
        return env if Path(env).exists() or shutil.which(env) else None
    for name in CANDIDATES:
        hit = shutil.which(name)
        if hit:
            return hit
    return None


def require_chromium() -> str:
    """The browser for tests: skip when absent locally, FAIL when absent under CI (CI=true/1)."""
    import pytest

    exe = find_chromium()
    if exe:
        return exe
    msg = "headless Chromium not found (Debian: apt-get install -y chromium; or set SBIF_CHROMIUM)"
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(msg + " -- required under CI")
    pytest.skip(msg)


def _inject(src: str) -> str:
    m = re.search(r"<head[^>]*>", src, re.IGNORECASE)
    if m:
        return src[: m.end()] + PROBE + src[m.end() :]
    m = re.search(r"<html[^>]*>", src, re.IGNORECASE)
    at = m.end() if m else 0
    return src[:at] + "<head>" + PROBE + "</head>" + src[at:]


def _run(cmd: list[str], timeout: float) -> tuple[str, str]:
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the browser's own process group, started above
        out, err = proc.communicate()
        raise RuntimeError(f"chromium timed out after {timeout}s: {' '.join(cmd[:2])} …\n{err[-2000:]}") from None
    return out, err


def render(
    html_path: str | Path,
    *,
    screenshot: str | Path | None = None,
    width: int = 1400,
    max_height: int = 20000,
    budget_ms: int = 20000,
    timeout: float = 180,
    chromium: str | None = None,
) -> RenderResult:
    """Load `html_path` headlessly; count rendered charts, collect JS errors; optionally save a PNG."""
    exe = chromium or find_chromium()
    if not exe:
        raise FileNotFoundError("headless Chromium not found (apt-get install -y chromium)")
    src = Path(html_path).read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="sbif-browser-") as tmp:
        page = Path(tmp) / "page.html"
        page.write_text(_inject(src), encoding="utf-8")
        base = [exe, *FLAGS, f"--user-data-dir={Path(tmp) / 'profile'}", f"--virtual-time-budget={budget_ms}"]
        dom, log = _run(
            [
                *base,
                "--enable-logging=stderr",
                "--v=0",
                f"--window-size={width},1200",
                "--dump-dom",
                page.as_uri(),
            ],
            timeout,
        )
        m = re.search(r'<pre id="__sbif_probe"[^>]*>(.*?)</pre>', dom, re.DOTALL)
        if m:
            st = json.loads(html.unescape(m.group(1)))
        else:
            st = {
                "containers": 0,
                "rendered": 0,
                "missing": [],
                "page_done": False,
                "page_status": None,
                "errors": ["probe did not report: the page never finished loading"],
                "warnings": [],
                "height": 0,
            }
        errors = list(st["errors"])
        for line in log.splitlines():
            c = _CONSOLE.search(line)
            if c and c.group("msg").startswith("Uncaught"):
                msg = "uncaught: " + c.group("msg").removeprefix("Uncaught ").strip()
                if not any(c.group("msg").removeprefix("Uncaught ").strip() in e for e in errors):
                    errors.append(msg)
        shot = None
        if screenshot is not None:
            shot = Path(screenshot)
            shot.parent.mkdir(parents=True, exist_ok=True)
            h = int(min(max(st.get("height") or 1200, 600), max_height))
            _run(
                [*base, f"--window-size={width},{h}", f"--screenshot={shot.resolve()}", page.as_uri()],
                timeout,
            )
            if not shot.exists():
                raise RuntimeError(f"chromium wrote no screenshot to {shot}")
    return RenderResult(
        charts=int(st["containers"]),
        rendered=int(st["rendered"]),
        missing=list(st["missing"]),
        errors=errors,
        warnings=list(st["warnings"]),
        page_done=bool(st["page_done"]),
        page_status=st.get("page_status"),
        height=int(st.get("height") or 0),
        screenshot=shot,
        log=log,
    )


if __name__ == "__main__":  # python tests/browser.py report.html [shot.png]
    import sys

    r = render(sys.argv[1], screenshot=sys.argv[2] if len(sys.argv) > 2 else None)
    print(json.dumps({k: v for k, v in r.__dict__.items() if k != "log"}, default=str, indent=2))
    sys.exit(0 if r.ok else 1)

"""Open every page of a built site in headless Chromium and report what a reader would trip on.

The site is served from a local HTTP server (as a web host would); Chromium is driven through
its DevTools protocol (``websocket-client``). For each page:

- every request the page makes stays on the site and succeeds (no CDN, no 404);
- math is rendered: no ``.math`` element is left holding raw TeX (``\\(``, ``\\[``, ``$$``);
- every image loads (``naturalWidth > 0``);
- no notebook code block needs horizontal scrolling in a 1280-pixel-wide window;
- every link into the site resolves to a file, and its ``#fragment`` to an element id.

Command line: ``python -m mocoxr.book.sitecheck _build/html [--screenshots DIR]`` (exit 1 on a
problem). Chromium is found as ``chromium``, ``chromium-browser`` or ``google-chrome``
(Debian: ``apt-get install -y chromium``).
"""

from __future__ import annotations

import argparse
import base64
import functools
import http.server
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--hide-scrollbars", "--window-size=1280,900")

# Runs in the page once loaded and MathJax (if any) has typeset.
PAGE_PROBE = r"""
(async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  }
  await new Promise(r => setTimeout(r, 50));
  const raw = [...document.querySelectorAll('.math')]
    .filter(e => !e.querySelector('mjx-container'))
    .map(e => e.textContent.trim().slice(0, 60))
    .filter(t => /\\\(|\\\[|\$\$/.test(t) || t.length > 0);
  const images = [...document.images].map(i => ({src: i.currentSrc || i.src,
                                                 ok: i.complete && i.naturalWidth > 0}));
  const links = [...document.querySelectorAll('a[href]')].map(a => a.href);
  const ids = [...document.querySelectorAll('[id]')].map(e => e.id);
  const text = document.body ? document.body.innerText : '';
  const wide = [...document.querySelectorAll('div.cell_input pre')]
    .filter(p => p.scrollWidth > p.clientWidth + 1)
    .map(p => p.textContent.split('\n').sort((a, b) => b.length - a.length)[0].slice(0, 60));
  return JSON.stringify({raw_math: raw, math: document.querySelectorAll('mjx-container').length,
                         images, links, ids, wide, title: document.title,
                         raw_inline: (text.match(/\\\([^\n]{0,40}?\\\)/g) || []).slice(0, 3)});
})()
"""


def find_browser() -> str | None:
    """Path of an installed Chromium/Chrome, or None."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageReport:
    page: str
    problems: list[str] = field(default_factory=list)
    requests: int = 0
    images: int = 0
    math: int = 0


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


def serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Serve ``root`` on 127.0.0.1 (a free port) in a daemon thread; returns (server, base URL)."""
    handler = functools.partial(_Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


class Browser:
    """Headless Chromium with one page, driven through the DevTools protocol."""

    def __init__(self, executable: str, timeout: float = 30.0) -> None:
        import websocket  # websocket-client

        self.profile = tempfile.mkdtemp(prefix="mocoxr-chromium-")
        self.proc = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-port=0",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.time() + timeout
        while not port_file.is_file() or not port_file.read_text().strip():
            if time.time() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError(f"{executable} did not start (exit {self.proc.poll()})")
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
        page = next(t for t in targets if t.get("type") == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=timeout,
                                              suppress_origin=True)
        self.timeout, self._id, self.events = timeout, 0, []
        for domain in ("Page", "Network", "Runtime"):
            self.call(f"{domain}.enable")
        self.call("Network.setCacheDisabled", cacheDisabled=True)

    def call(self, method: str, **params: Any) -> dict:
        """Send one command and return its result; events that arrive meanwhile are kept."""
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, method: str) -> None:
        deadline = time.time() + self.timeout
        while not any(e.get("method") == method for e in self.events):
            if time.time() > deadline:
                raise TimeoutError(f"no {method} within {self.timeout} s")
            self.events.append(json.loads(self.ws.recv()))

    def open(self, url: str) -> list[dict]:
        """Navigate and wait for the load event (+ a moment for late requests); returns the
        network events of this page."""
        self.events = []
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")
        self.call("Runtime.evaluate", expression="new Promise(r => setTimeout(r, 300))",
                  awaitPromise=True)
        return [e for e in self.events if e.get("method", "").startswith("Network.")]

    def evaluate(self, expression: str) -> Any:
        res = self.call("Runtime.evaluate", expression=expression, awaitPromise=True,
                        returnByValue=True, timeout=int(self.timeout * 1000))
        if "exceptionDetails" in res:
            raise RuntimeError(f"script failed: {res['exceptionDetails'].get('text')}")
        return res["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)

    def close(self) -> None:
        try:
            if getattr(self, "ws", None) is not None:
                self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            shutil.rmtree(self.profile, ignore_errors=True)


_REFRESH = re.compile(r'<meta[^>]+http-equiv="refresh"[^>]+content="\d+;\s*url=([^"]+)"', re.I)


def _network_problems(events: list[dict], base: str) -> tuple[int, list[str]]:
    urls, problems = {}, []
    for e in events:
        p = e.get("params", {})
        if e["method"] == "Network.requestWillBeSent":
            urls[p["requestId"]] = url = p["request"]["url"]
            if url == base + "favicon.ico":
                continue  # asked for by the browser itself, not by the page
            if not url.startswith((base, "data:", "blob:", "about:")):
                problems.append(f"request outside the site: {url}")
        elif e["method"] == "Network.loadingFailed" and not p.get("canceled"):
            problems.append(f"failed request {urls.get(p['requestId'], '?')}: {p.get('errorText')}")
        elif e["method"] == "Network.responseReceived" and p["response"]["status"] >= 400 \
                and p["response"]["url"] != base + "favicon.ico":
            problems.append(f"HTTP {p['response']['status']} for {p['response']['url']}")
    return len(urls), problems


def _link_problems(links: Sequence[str], page_url: str, page_ids: Sequence[str], base: str,
                   root: Path) -> list[str]:
    problems = []
    for link in sorted(set(links)):
        if not link.startswith(base):
            continue  # external links are the reader's to follow; they are not loaded
        parsed = urllib.parse.urlsplit(link)
        rel = urllib.parse.unquote(parsed.path)[1:]
        target = root / rel
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            problems.append(f"broken link {link}")
            continue
        frag = urllib.parse.unquote(parsed.fragment)
        if frag and target.suffix == ".html":
            same = link.split("#")[0] == page_url.split("#")[0]
            ids = page_ids if same else re.findall(r'\bid="([^"]+)"', target.read_text())
            if frag not in ids:
                problems.append(f"link {link}: no element with id {frag!r}")
    return problems


def check_site(html_dir: str | Path, browser: str | None = None,
               screenshots: dict[str, Path] | None = None,
               pages: Sequence[str] | None = None) -> list[PageReport]:
    """Open every ``*.html`` page under ``html_dir`` (or only ``pages``, paths relative to it);
    one :class:`PageReport` per page. ``screenshots``: ``{page: png path}`` to capture."""
    root = Path(html_dir).resolve()
    executable = browser or find_browser()
    if executable is None:
        raise FileNotFoundError(f"no browser found (tried {', '.join(BROWSERS)})")
    if pages is None:
        pages = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.html")
                       if "_static" not in p.parts and "_sources" not in p.parts)
    server, base = serve(root)
    chrome = Browser(executable)
    reports = []
    try:
        for page in pages:
            url = base + page
            redirect = _REFRESH.search((root / page).read_text(errors="replace"))
            if redirect:  # a redirect page (Jupyter Book's index.html): its target must exist
                target = urllib.parse.urljoin(url, redirect.group(1).strip())
                reports.append(PageReport(page, _link_problems([target], url, [], base, root)))
                continue
            n_requests, problems = _network_problems(chrome.open(url), base)
            info = json.loads(chrome.evaluate(PAGE_PROBE))
            problems += [f"unrendered math: {t!r}" for t in info["raw_math"]]
            problems += [f"raw TeX in the text: {t!r}" for t in info["raw_inline"]]
            problems += [f"image does not load: {i['src']}" for i in info["images"] if not i["ok"]]
            problems += [f"code wider than the page: {t!r}" for t in info["wide"]]
            problems += _link_problems(info["links"], url, info["ids"], base, root)
            reports.append(PageReport(page, problems, n_requests, len(info["images"]), info["math"]))
            if screenshots and page in screenshots:
                chrome.screenshot(screenshots[page])
    finally:
        chrome.close()
        server.shutdown()
    return reports


def main(argv: Sequence[str] | None = None, prog: str = "python -m mocoxr.book.sitecheck") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    ap.add_argument("html_dir", type=Path, help="the built site, e.g. _build/html")
    ap.add_argument("--browser", help="Chromium executable (default: found on PATH)")
    ap.add_argument("--screenshots", type=Path, help="folder for a screenshot of every page")
    args = ap.parse_args(argv)
    shots = None
    if args.screenshots:
        args.screenshots.mkdir(parents=True, exist_ok=True)
        shots = {p.relative_to(args.html_dir.resolve()).as_posix():
                 args.screenshots / (p.stem + ".png") for p in args.html_dir.resolve().rglob("*.html")}
    reports = check_site(args.html_dir, args.browser, shots)
    bad = 0
    for r in reports:
        print(f"{r.page}: {r.requests} requests, {r.images} images, {r.math} formulas"
              + ("" if not r.problems else "\n  " + "\n  ".join(r.problems)))
        bad += bool(r.problems)
    print(f"{len(reports) - bad} of {len(reports)} pages without a problem")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

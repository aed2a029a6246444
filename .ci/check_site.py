"""Check the built documentation site in headless Chromium.

    python .ci/check_site.py SITE_DIR [--screenshots DIR] [--width 1280] [--only GLOB]

Serves SITE_DIR on 127.0.0.1 and, for every page:

- every link, image, stylesheet and script that points inside the site
  resolves to a file, and every ``#anchor`` to an id on its page;
- in Chromium, every image loads, the page does not scroll sideways, and no
  code block or table is wider than its box (hidden behind a scroll bar);
- a screenshot of the page is saved.

Exits 1 and lists every problem, page by page, when there is one.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import html.parser
import http.server
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import urllib.parse

# Added to each page as it is served: reports what Chromium sees, as JSON in
# an element that --dump-dom prints.
PROBE = """<script>
window.addEventListener("load", () => setTimeout(() => {
  const problems = [];
  for (const img of document.images) {
    if (!img.complete || img.naturalWidth === 0)
      problems.push("broken image: " + img.getAttribute("src"));
  }
  const root = document.documentElement;
  if (root.scrollWidth > root.clientWidth + 1)
    problems.push(`the page scrolls sideways: ${root.scrollWidth} px in ${root.clientWidth}`);
  const boxes = ".md-content pre > code, .md-content .md-typeset__scrollwrap";
  for (const el of document.querySelectorAll(boxes)) {
    if (el.scrollWidth > el.clientWidth + 1)
      problems.push(`${el.className || el.tagName} wider than its box ` +
                    `(${el.scrollWidth} > ${el.clientWidth} px): ` +
                    el.textContent.trim().slice(0, 70));
  }
  const out = document.createElement("pre");
  out.id = "site-check";
  out.textContent = JSON.stringify(problems);
  document.body.appendChild(out);
}, 300));
</script>"""
REPORT = re.compile(r'<pre id="site-check">(.*?)</pre>', re.DOTALL)


class Page(html.parser.HTMLParser):
    """The references and ids of one HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.references: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(values["id"] or "")
        for name in ("href", "src"):
            if values.get(name):
                self.references.append(values[name] or "")


@functools.cache
def parse(path: pathlib.Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def target(site: pathlib.Path, page: pathlib.Path, reference: str
           ) -> tuple[pathlib.Path, str] | None:
    """The file a reference inside the site points to, and its #anchor;
    None for references that leave the site."""
    parts = urllib.parse.urlsplit(reference)
    if parts.scheme or parts.netloc or reference.startswith(("mailto:", "data:")):
        return None
    if not parts.path:
        return page, parts.fragment
    base = site if parts.path.startswith("/") else page.parent
    path = (base / urllib.parse.unquote(parts.path.lstrip("/"))).resolve()
    if path.is_dir() or parts.path.endswith("/"):
        path = path / "index.html"
    return path, parts.fragment


def static_problems(site: pathlib.Path, page: pathlib.Path) -> list[str]:
    problems = []
    for reference in parse(page).references:
        found = target(site, page, reference)
        if found is None:
            continue
        path, anchor = found
        if not path.is_file():
            problems.append(f"broken link: {reference}")
        elif anchor and path.suffix == ".html" and anchor not in parse(path).ids:
            problems.append(f"broken anchor: {reference}")
    return problems


def serve(site: pathlib.Path) -> http.server.ThreadingHTTPServer:
    """An HTTP server on 127.0.0.1 that adds the probe to every page."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(site), **kwargs)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            path = pathlib.Path(self.translate_path(self.path))
            if path.is_dir():
                path = path / "index.html"
            if path.suffix != ".html" or not path.is_file():
                super().do_GET()
                return
            body = path.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>")
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def chromium(*args: str) -> str:
    """Run headless Chromium to its end (its whole process group on a timeout)."""
    command = ["chromium", "--headless", "--no-sandbox", "--disable-gpu",
               "--hide-scrollbars", "--virtual-time-budget=5000", *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True, start_new_session=True)
    try:
        out, _ = process.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return out


def browser_problems(url: str, width: int, screenshot: pathlib.Path) -> list[str]:
    dom = chromium(f"--window-size={width},900", "--dump-dom", url)
    report = REPORT.search(dom)
    problems = ["the page did not finish loading in Chromium"] if report is None else [
        html.unescape(p) for p in json.loads(html.unescape(report.group(1)))]
    chromium(f"--window-size={width},1600", f"--screenshot={screenshot}", url)
    if not screenshot.is_file():
        problems.append(f"Chromium wrote no screenshot to {screenshot}")
    return problems


def check(site: pathlib.Path, screenshots: pathlib.Path, width: int,
          only: str = "*") -> dict[str, list[str]]:
    pages = sorted(p for p in site.rglob("*.html") if p.relative_to(site).match(only))
    screenshots.mkdir(parents=True, exist_ok=True)
    server = serve(site)
    base = f"http://127.0.0.1:{server.server_address[1]}/"

    def one(page: pathlib.Path) -> list[str]:
        relative = page.relative_to(site).as_posix()
        name = relative.replace("/", "_").removesuffix(".html") + ".png"
        return static_problems(site, page) + browser_problems(
            base + relative, width, screenshots / name)

    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            found = dict(zip(pages, pool.map(one, pages)))
    finally:
        server.shutdown()
        server.server_close()
    return {page.relative_to(site).as_posix(): problems for page, problems in found.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=pathlib.Path)
    parser.add_argument("--screenshots", type=pathlib.Path, default=pathlib.Path("screens"))
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--only", default="*", help="pages matching this glob")
    args = parser.parse_args()
    results = check(args.site.resolve(), args.screenshots, args.width, args.only)
    for page, problems in results.items():
        print(f"{'ok  ' if not problems else 'FAIL'} {page}")
        for problem in problems:
            print(f"       {problem}")
    failed = sum(bool(p) for p in results.values())
    print(f"{len(results)} pages, {failed} with problems; screenshots in {args.screenshots}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

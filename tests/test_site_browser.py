"""The built site of the tiny profile (the session fixture ``tiny``, built once) opened in
headless Chromium (mocoxr.book.sitecheck): no request leaves the site or fails, math is rendered,
every image loads, every internal link resolves, code fits the page. Skips, saying so, only
when no Chromium is installed (.ci/run installs it). Also: no absolute path of this machine in
any file of the site."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mocoxr.book import sitecheck

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_PAGES = [f"book/executed/{n}.html" for n in
                  ("01_data", "02_pretrain", "03_linear_probe", "04_finetune", "05_shenzhen",
                   "06_results")]
EXPLORER_PAGES = NOTEBOOK_PAGES[:4]  # chapters 01-04 end a section with an explorer
# per explorer cell (tag "explorer"): its loaded images, and whether it shows a widget's text
EXPLORER_PROBE = """JSON.stringify([...document.querySelectorAll('div.tag_explorer')].map(c => ({
  images: [...c.querySelectorAll('.cell_output img')]
    .filter(i => i.complete && i.naturalWidth > 100).length,
  widget: /VBox|Explorer:|widget/.test(c.querySelector('.cell_output')?.innerText || '')})))"""


@pytest.fixture(scope="module")
def browser() -> str:
    path = sitecheck.find_browser()
    if path is None:
        pytest.skip("no Chromium found (chromium, chromium-browser, google-chrome): install it "
                    "with `apt-get install -y chromium`; .ci/run does so when it is missing")
    return path


def test_site_has_no_absolute_path_of_this_machine(tiny):
    run_dir, _, index, _ = tiny
    html_dir = index.parent
    needles = [str(run_dir), str(run_dir.parent), str(ROOT), str(Path.home()) + "/"]
    found = []
    for f in html_dir.rglob("*"):
        if f.is_file() and f.suffix in (".html", ".ipynb", ".txt", ".md", ".js", ".csv") \
                and "_static" not in f.parts:
            text = f.read_text(errors="replace")
            found += [f"{f.relative_to(html_dir)}: {n}" for n in needles if n in text]
    assert not found, found[:10]


def test_every_page_loads_offline_with_math_images_and_links(tiny, browser, tmp_path):
    html_dir = tiny[2].parent
    shots = {"book/executed/04_finetune.html": tmp_path / "04.png"}
    reports = {r.page: r for r in sitecheck.check_site(html_dir, browser, shots)}
    assert {"index.html", "book/time.html", "book/references.html", *NOTEBOOK_PAGES} <= set(reports)
    problems = {p: r.problems for p, r in reports.items() if r.problems}
    assert not problems, problems
    assert reports["book/executed/02_pretrain.html"].math >= 1  # ln(K+1), typeset offline
    for page in NOTEBOOK_PAGES:
        assert reports[page].images >= 1 and reports[page].requests > 0, page
    assert reports["book/executed/04_finetune.html"].images >= 5  # + Grad-CAM, reliability
    assert shots["book/executed/04_finetune.html"].stat().st_size > 10_000
    refs = (html_dir / "book" / "references.html").read_text().lower()
    for title in ("moco-pretraining improves", "momentum contrast", "improved baselines",
                  "chexpert", "screening of pulmonary diseases"):
        assert title in refs, title
    assert "references.html#id" in (html_dir / "book" / "intro.html").read_text()  # citations
    assert "Where the time went" in (html_dir / "book" / "time.html").read_text()


def test_the_check_catches_a_broken_site(tiny, browser, tmp_path):
    """Sabotage a copy: an external script, a missing image, a dead link, MathJax removed."""
    site = tmp_path / "html"
    shutil.copytree(tiny[2].parent, site)
    page = site / "book" / "executed" / "02_pretrain.html"
    text = page.read_text()
    assert "_static/mathjax/tex-chtml.js" in text  # served from the site itself
    text = text.replace("_static/mathjax/tex-chtml.js", "_static/mathjax/gone.js")
    text = text.replace("</body>", '<img src="missing.png"><a href="nowhere.html">x</a>'
                        '<a href="01_data.html#no-such-id">y</a>'
                        '<script src="https://cdn.jsdelivr.net/npm/nothing@1/x.js"></script></body>')
    page.write_text(text)
    report = sitecheck.check_site(site, browser, pages=["book/executed/02_pretrain.html"])[0]
    found = "\n".join(report.problems)
    for expected in ("request outside the site: https://cdn.jsdelivr.net", "unrendered math",
                     "image does not load", "broken link", "no element with id 'no-such-id'",
                     "gone.js"):
        assert expected in found, found


def explorer_cells(html_dir: Path, browser: str, pages: list[str]) -> dict[str, list[dict]]:
    """What each page's explorer cells show in Chromium (see EXPLORER_PROBE)."""
    server, base = sitecheck.serve(html_dir)
    chrome = sitecheck.Browser(browser)
    try:
        out = {}
        for page in pages:
            chrome.open(base + page)
            out[page] = json.loads(chrome.evaluate(EXPLORER_PROBE))
        return out
    finally:
        chrome.close()
        server.shutdown()


def test_each_explorer_cell_shows_its_default_figure(tiny, browser):
    """Without a kernel the page shows the explorer's figure of the default selection (not an
    empty widget, nor the widget's text)."""
    found = explorer_cells(tiny[2].parent, browser, EXPLORER_PAGES)
    assert found == {page: [{"images": 1, "widget": False}] for page in EXPLORER_PAGES}, found

"""The book as readers see it: the website preview that `make docs` builds without Quarto
(tools/build_preview.py), opened in a real headless Chromium over a local http server and from disk.
Pages load every image, show their notebook's headings, and the sidebar's links lead to the chapters; equations are
typeset offline (MathJax copied into the site), API entries show their source link as a link, not Quarto's attribute
text, and docstring `Shape:` lists stay lists."""
import base64
import functools
import http.server
import io
import re
import shutil
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import nbformat
import os
import png
import pytest
import yaml

from conftest import ROOT, require_browser

sys.path.insert(0, str(ROOT / "tools"))
import build_preview  # noqa: E402

NBS = ROOT / "nbs"
PAGES_CHECKED = ["index.ipynb", "05a_features.ipynb", "07_reversed.ipynb"]
IMAGES_JS = "return [...document.images].map(i => [i.getAttribute('src').slice(0, 60), i.complete, i.naturalWidth])"
# A heading's text with any equation MathJax typeset put back as its TeX source (`$...$`), typeset yet or not.
HEADINGS_JS = """return [...document.querySelectorAll('main h1, main h2')].map(h => {
  const c = h.cloneNode(true);
  c.querySelectorAll('.MathJax_Preview, .MathJax_CHTML, .mjx-chtml').forEach(e => e.remove());
  c.querySelectorAll('script[type^="math/tex"]').forEach(s => s.replaceWith('$' + s.textContent + '$'));
  return c.textContent; })"""
SIDEBAR_JS = "return [...document.querySelectorAll('nav.preview-sidebar li a')].map(a => [a.textContent, a.getAttribute('href')])"


@contextmanager
def serve(folder: Path):
    "A local http server for `folder` on a free port; yields its base URL."
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args): pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try: yield f"http://127.0.0.1:{server.server_port}/"
    finally: server.shutdown(); server.server_close()


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    "The preview of this book, built into a temporary folder; README.md's bytes and time before and after."
    out = tmp_path_factory.mktemp("docs")
    readme = lambda: ((ROOT / "README.md").read_bytes(), (ROOT / "README.md").stat().st_mtime_ns)
    before = readme()
    pages = build_preview.build_preview(ROOT, out)
    return out, pages, (before, readme())


def _png(width: int, height: int) -> bytes:
    "A small RGB PNG: a red-to-blue gradient."
    rows = [[v for x in range(width) for v in (255 * x // width, 0, 255 - 255 * x // width)] for _ in range(height)]
    buf = io.BytesIO()
    png.Writer(width, height, greyscale=False).write(buf, rows)
    return buf.getvalue()


@pytest.fixture(scope="module")
def mini_book(tmp_path_factory):
    """A two-page book (the committed notebooks have no outputs yet): an index linking to `01_figure.ipynb`,
    which has a figure output (40x30) and a markdown image file (24x16)."""
    root = tmp_path_factory.mktemp("mini")
    shutil.copy(ROOT / "settings.ini", root / "settings.ini")
    nbs = root / "nbs"
    nbs.mkdir()
    v4 = nbformat.v4
    kernel = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}}
    index = v4.new_notebook(metadata=kernel, cells=[v4.new_markdown_cell("# Mini book\n\n> Two pages"),
                                                    v4.new_markdown_cell("See [the figures](01_figure.ipynb).")])
    figure_output = v4.new_output("display_data", data={"image/png": base64.b64encode(_png(40, 30)).decode(), "text/plain": "<Figure>"})
    figure = v4.new_notebook(metadata=kernel, cells=[
        v4.new_markdown_cell("# Figures\n\n> A drawn figure and an image file"),
        v4.new_markdown_cell("## A drawn figure"), v4.new_code_cell("show(figure)", outputs=[figure_output]),
        v4.new_markdown_cell("## An image file\n\n![a gradient](gradient.png)")])
    nbformat.write(index, nbs / "index.ipynb")
    nbformat.write(figure, nbs / "01_figure.ipynb")
    (nbs / "gradient.png").write_bytes(_png(24, 16))
    sidebar = {"contents": ["index.ipynb", {"section": "Figures", "contents": ["01_figure.ipynb"]}]}
    (nbs / "_quarto.yml").write_text(yaml.safe_dump({"project": {"type": "website"}, "website": {"title": "mini", "sidebar": sidebar}}))
    out = root / "_docs"
    return out, build_preview.build_preview(root, out)


@pytest.fixture(scope="module")
def browser():
    "Headless Chromium through chromedriver; every host but this machine fails to resolve (pages must work offline)."
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _plain(markdown: str) -> str:
    "Inline markdown as the text a reader sees: links to their text, no backticks or emphasis stars."
    return " ".join(re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", markdown).replace("`", "").replace("*", "").split())


def markdown_headings(notebook: Path) -> list[str]:
    "The level-1 and level-2 headings of a notebook's markdown cells (outside code fences), as plain text."
    out = []
    for cell in nbformat.read(notebook, as_version=4).cells:
        if cell.cell_type != "markdown": continue
        fenced = False
        for line in cell.source.splitlines():
            if line.lstrip().startswith("```"): fenced = not fenced
            m = None if fenced else re.match(r"#{1,2}\s+(.+?)\s*$", line)
            if m: out.append(_plain(m[1]))
    return out


def _page(pages: dict, notebook: str):
    page = pages[notebook]
    assert page.href, f"{notebook} has no page: nbdev's docs processing failed (nbdev_docs fails too): {page.error}"
    return page


def _broken_images(driver) -> list:
    return [img for img in driver.execute_script(IMAGES_JS) if not (img[1] and img[2] > 0)]


def _wait_for_title(driver, title: str, url: str):
    from selenium.webdriver.support.ui import WebDriverWait
    try: WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.querySelector('h1.title')?.innerText") == title)
    except Exception:
        h1 = driver.execute_script("return document.querySelector('h1.title')?.innerText")
        pytest.fail(f"following the sidebar link to {url} showed the page {driver.current_url} titled {h1!r}; expected {title!r}")


def test_every_notebook_gets_a_page(book):
    _, pages, _ = book
    failed = {name: p.error for name, p in pages.items() if not p.href}
    assert not failed, ("nbdev's docs processing failed (nbdev_docs fails on these too): it runs every cell that holds an "
                        f"import, even one inside a function, and such a cell must not use names from cells it skips: {failed}")
    assert sorted(pages) == sorted(p.name for p in NBS.glob("*.ipynb")), f"pages {sorted(pages)} are not one per notebook"


def test_build_leaves_readme_alone(book):
    _, _, (before, after) = book
    assert before == after, "building the docs changed README.md; it is written by hand and must stay as it is"


@pytest.mark.parametrize("notebook", PAGES_CHECKED)
def test_page_shows_headings_and_loads_images(book, browser, notebook):
    out, pages, _ = book
    page = _page(pages, notebook)
    with serve(out) as url:
        browser.get(url + page.href)
        assert browser.title == page.title, f"{page.href}: <title> is {browser.title!r}; expected {page.title!r}"
        assert not _broken_images(browser), f"{page.href}: images that did not load: {_broken_images(browser)}"
        shown = [" ".join(h.replace("¶", "").split()) for h in browser.execute_script(HEADINGS_JS)]
    expected = markdown_headings(NBS / notebook)
    assert shown == expected, f"{page.href}: h1/h2 headings {shown}; expected the notebook's headings {expected}"


def _sidebar_notebooks(contents: list) -> list[str]:
    "Files of `website.sidebar.contents` in reading order (sections flattened)."
    out = []
    for e in contents:
        if isinstance(e, str): out.append(e)
        else: out += ([e["href"]] if "href" in e else []) + _sidebar_notebooks(e.get("contents", []))
    return out


def test_sidebar_links_lead_to_every_chapter(book, browser):
    out, pages, _ = book
    order = _sidebar_notebooks(yaml.safe_load((ROOT / "_quarto.yml").read_text())["website"]["sidebar"]["contents"])
    expected = [[pages[n].title, pages[n].href] for n in order if pages[n].href]
    assert order[0] == "index.ipynb" and expected[0][1] == "index.html", f"the sidebar must start with the index page: {order[:2]}"
    with serve(out) as url:
        browser.get(url + "index.html")
        links = browser.execute_script(SIDEBAR_JS)
        assert links == expected, f"sidebar links {links}; expected _quarto.yml's order {expected}"
        for title, href in links[1:] + links[:1]:  # walk every chapter through the sidebar, back to the index
            browser.execute_script("document.querySelector(`nav.preview-sidebar a[href='${arguments[0]}']`).click()", href)
            _wait_for_title(browser, title, url + href)
            assert browser.current_url == url + href, f"the link {href!r} led to {browser.current_url}"


def test_links_work_from_disk(book, browser):
    out, pages, _ = book
    features = _page(pages, "05a_features.ipynb")
    browser.get((out / "index.html").as_uri())
    browser.execute_script("document.querySelector(`nav.preview-sidebar a[href='${arguments[0]}']`).click()", features.href)
    _wait_for_title(browser, features.title, (out / features.href).as_uri())
    assert not _broken_images(browser), f"{features.href} from disk: images that did not load: {_broken_images(browser)}"


def test_figures_and_image_files_load(mini_book, browser):
    out, pages = mini_book
    figure = _page(pages, "01_figure.ipynb")
    with serve(out) as url:
        browser.get(url + "index.html")
        links = browser.execute_script("return [...document.querySelectorAll('main a')].map(a => a.getAttribute('href'))")
        assert figure.href in links, f"index.html links to {links}; expected 01_figure.ipynb's link to become {figure.href!r}"
        browser.execute_script("document.querySelector(`main a[href='${arguments[0]}']`).click()", figure.href)
        _wait_for_title(browser, "Figures", url + figure.href)
        images = browser.execute_script(IMAGES_JS)
    assert [(done, width) for _, done, width in images] == [(True, 40), (True, 24)], \
        f"{figure.href}: images {images}; expected the 40-pixel figure output and the 24-pixel gradient.png, both loaded"


def test_quarto_link_attributes_become_html():
    md = '---\n\n[source](https://h/f.py#L3){target="_blank" style="float:right; font-size:smaller"}\n\n### f'
    assert build_preview.quarto_link_attributes(md) == (
        '---\n\n<p><a href="https://h/f.py#L3" target="_blank" style="float:right; font-size:smaller">source</a></p>\n\n### f')
    assert build_preview.quarto_link_attributes("[a](b.html){.c #d}") == '<p><a href="b.html" id="d" class="c">a</a></p>'
    assert build_preview.quarto_link_attributes("x [a](b.html){.c} y") == "x [a](b.html) y"   # inside a line: the link alone
    assert build_preview.quarto_link_attributes("[plain](x.html) and {braces}") == "[plain](x.html) and {braces}"


def test_docstring_lists_become_lists():
    md = "*Doc.*\n\nShape:\n    - input: `(B,C,H,W)`\n    - output: `(B,K,h,w)` with\n      more\nAfter."
    assert build_preview.docstring_lists(md) == "*Doc.*\n\nShape:\n\n- input: `(B,C,H,W)`\n- output: `(B,K,h,w)` with\n  more\n\nAfter."
    assert build_preview.docstring_lists("Text:\n\n    code") == "Text:\n\n    code"   # an indented block that is no list


def test_code_fold_and_echo_false_render_as_quarto_would():
    "`#| code-fold: true` folds the cell's code under a 'Code' disclosure; `#| echo: false` shows the output only."
    import nbformat
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("#| code-fold: true\nfolded_value = 1", outputs=[]),
        nbformat.v4.new_code_cell("#| echo: false\nhidden_value = 2", outputs=[nbformat.v4.new_output("stream", text="the output")]),
        nbformat.v4.new_code_cell("shown_value = 3", outputs=[])])
    nb = build_preview.prepare_cells(nb, {}, "")
    assert [c.metadata.get("tags", []) for c in nb.cells] == [["code_fold"], ["remove_input"], []]
    assert "#|" not in "".join(c.source for c in nb.cells)
    resources = {"metadata": {"name": "t", "path": "."}, "preview": {"sections": [], "href": "t.html", "home": "t.html",
                                                                   "site_title": "s", "title": "t", "description": ""}}
    html, _ = build_preview.make_exporter().from_notebook_node(nb, resources=resources)
    fold = html.index('<details class="code-fold"><summary>Code</summary>')
    assert fold < html.index("folded_value") < html.index("</details>", fold)
    assert "hidden_value" not in html and "the output" in html
    assert html.count("<details") == 1 and "shown_value" in html


def require_mathjax():
    "MathJax 2 from Debian's libjs-mathjax (`make browser` installs it) or skip; CI fails instead."
    if any((d / "MathJax.js").exists() for d in build_preview.MATHJAX_DIRS): return
    msg = "MathJax missing: Debian's libjs-mathjax (run `make test` as root: `make browser` installs it)"
    if os.environ.get("MOTION_NBS_REQUIRE_REFERENCES") == "1": pytest.fail(f"{msg}; required because MOTION_NBS_REQUIRE_REFERENCES=1")
    pytest.skip(msg)


# The page's visible text outside code (code may hold `$` or braces), and what a reader would see of an untypeset
# equation or an unrendered Quarto attribute.
VISIBLE_TEXT_JS = """const main = document.querySelector('main').cloneNode(true);
main.querySelectorAll('pre, code, script, .jp-CodeCell .jp-InputArea').forEach(e => e.remove());
return main.innerText;"""
RAW = ["$$", "\\(", "\\[", "$\\", "{target=", 'style="float']


def test_equations_typeset_and_api_entries_render(book, browser):
    require_mathjax()
    from selenium.webdriver.support.ui import WebDriverWait
    out, pages, _ = book
    page = _page(pages, "05a_features.ipynb")
    assert (out / "mathjax" / "MathJax.js").exists(), "the preview did not copy MathJax into the site"
    for url in (None, (out / page.href).as_uri()):   # over http and from disk
        with serve(out) as base:
            browser.get(url or base + page.href)
            typeset = "return window.MathJax && MathJax.Hub && MathJax.Hub.queue.pending === 0 && document.querySelectorAll('.MathJax_CHTML').length"
            try: WebDriverWait(browser, 60).until(lambda d: d.execute_script(typeset))
            except Exception: pytest.fail(f"{browser.current_url}: MathJax did not typeset the equations (MathJax loaded: "
                                          f"{browser.execute_script('return !!window.MathJax')})")
            text = browser.execute_script(VISIBLE_TEXT_JS)
            raw = [r for r in RAW if r in text]
            assert not raw, f"{browser.current_url}: raw text a reader should not see: {raw}"
            errors = browser.execute_script("return document.querySelectorAll('.MathJax_CHTML merror, .mjx-merror').length")
            assert errors == 0, f"{browser.current_url}: {errors} equations MathJax could not typeset"
            sources = browser.execute_script("return [...document.querySelectorAll('main a')].filter(a => a.textContent == 'source')"
                                             ".map(a => [a.target, a.style.cssFloat])")
            assert sources and all(s == ["_blank", "right"] for s in sources), f"source links {sources[:3]}"
            shapes = browser.execute_script("return [...document.querySelectorAll('main li')].map(li => li.innerText)"
                                            ".filter(t => t.startsWith('input:') || t.startsWith('output:'))")
            assert len(shapes) >= 4, f"{page.href}: docstring Shape: items as list items {shapes}; expected HOG's and DenseSIFT's"

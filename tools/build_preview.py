"""Preview of the book's website without Quarto: nbdev's processed notebooks rendered by nbconvert.

`make docs` runs this when `quarto` is not on the PATH. Each notebook in nbs/ goes through nbdev's own
docs processors (frontmatter, `show_doc` tables, hidden cells removed) into `_proc/`, then nbconvert's
HTMLExporter writes one page per notebook into `_docs/`, under the name Quarto gives it (the
frontmatter's `output-file`, e.g. `features.html`), with a sidebar in the order of `_quarto.yml`'s
`website.sidebar.contents`. Links are relative and images are embedded, so the pages work opened from
disk or from a local http server. README.md is never written.

What Quarto would do and nbconvert does not is done to the markdown first: nbdev's link attributes
(`[source](url){target="_blank" style=...}`, Quarto syntax) become the link's HTML attributes, and a docstring's
indented `Shape:` (or `Args:`, `Returns:`) list under its heading becomes a markdown list. Equations are typeset by
MathJax 2 copied into `_docs/mathjax/` from Debian's `libjs-mathjax` (`make browser` installs it; `MATHJAX_DIRS`),
so pages typeset offline; without it they load MathJax from its CDN, as nbconvert does.

    python tools/build_preview.py [--root .] [--out _docs]

nbdev's `nbdev_proc_nbs` command is not called: it first installs Quarto when it is absent (a download)
and rewrites `motion_nbs/_modidx.py`; its per-notebook step (`nbdev.serve_drv.main` with
`FilterDefaults`) is called here for each notebook, so one broken notebook is reported beside the others.
"""
import argparse
import configparser
import html
import os
import re
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import jinja2
import nbformat
import yaml
from nbconvert import HTMLExporter
from nbconvert.preprocessors import TagRemovePreprocessor

# The lab template with a sidebar, the page title from the frontmatter, and a two-column layout.
PAGE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{% block extra_css %}
<style type="text/css">
body.jp-Notebook { display: flex; align-items: flex-start; padding: 0; }
nav.preview-sidebar { position: sticky; top: 0; flex: 0 0 16rem; height: 100vh; overflow-y: auto;
  padding: 1rem; box-sizing: border-box; border-right: 1px solid #ddd; font: 14px/1.4 sans-serif; }
nav.preview-sidebar ul { list-style: none; padding-left: 0.5rem; margin: 0.2rem 0 0.8rem; }
nav.preview-sidebar a { text-decoration: none; }
nav.preview-sidebar a[aria-current=page] { font-weight: bold; }
.preview-site { font-size: 1.2em; font-weight: bold; }
.preview-section { font-weight: bold; margin: 0.6rem 0 0; }
.preview-missing { color: #b00; }
main { flex: 1 1 auto; min-width: 0; padding: 1rem 2rem; font-family: var(--jp-content-font-family); }
div.description { font-style: italic; font-size: 1.2em; opacity: 0.7; }
</style>
details.code-fold > summary { cursor: pointer; font: 13px/1.6 sans-serif; opacity: 0.7; }
{% endblock extra_css %}
{% block input_group -%}
{%- if 'code_fold' in cell.metadata.get('tags', []) -%}
<details class="code-fold"><summary>Code</summary>{{ super() }}</details>
{%- else -%}{{ super() }}{%- endif -%}
{%- endblock input_group %}
{%- block body_header -%}
<body class="jp-Notebook" data-jp-theme-light="true" data-jp-theme-name="JupyterLab Light">
{%- set p = resources.preview %}
<nav class="preview-sidebar">
<p class="preview-site"><a href="{{ p.home | e }}">{{ p.site_title | e }}</a></p>
{%- for section in p.sections %}
{% if section.title %}<p class="preview-section">{{ section.title | e }}</p>{% endif %}
<ul>
{%- for page in section.pages %}
<li>{% if page.href %}<a href="{{ page.href | e }}"{% if page.href == p.href %} aria-current="page"{% endif %}>{{ page.title | e }}</a>
{%- else %}<span class="preview-missing">{{ page.title | e }} (not built)</span>{% endif %}</li>
{%- endfor %}
</ul>
{%- endfor %}
</nav>
<main>
<h1 class="title">{{ p.title | e }}</h1>
{% if p.description %}<div class="description">{{ p.description | markdown2html }}</div>{% endif %}
{%- endblock body_header -%}
"""

# MathJax 2 as Debian's libjs-mathjax installs it (first found), the parts a CommonHTML page with TeX input loads,
# and the URL the pages load it from (nbconvert's lab template configures MathJax 2 for `$...$` and `$$...$$`).
MATHJAX_DIRS = [Path(os.environ["MOTION_NBS_MATHJAX"])] if os.environ.get("MOTION_NBS_MATHJAX") else \
    [Path("/usr/share/javascript/mathjax"), Path("/usr/share/mathjax")]
MATHJAX_PARTS = ["MathJax.js", "config/TeX-AMS_CHTML-full.js", "config/Safe.js", "extensions", "jax/input/TeX",
                 "jax/element", "jax/output/CommonHTML", "fonts/HTML-CSS/TeX/woff"]
MATHJAX_URL = "mathjax/MathJax.js?config=TeX-AMS_CHTML-full,Safe"

# Quarto cell options (`#| echo: false`) as the tags nbconvert's TagRemovePreprocessor acts on, and `#| code-fold: true`
# as the tag the page template folds the cell's code under (Quarto's "Code" disclosure).
DIRECTIVE_TAGS = {("echo", "false"): "remove_input", ("output", "false"): "remove_output",
                  ("include", "false"): "remove_cell", ("code-fold", "true"): "code_fold"}
DIRECTIVE = re.compile(r"^#\|\s*([\w-]+)\s*:\s*(.*?)\s*$")


@dataclass
class Page:
    source: str            # notebook file name in nbs/, e.g. `05a_features.ipynb`
    href: str | None       # the page's file in the output folder; None when processing failed
    title: str
    description: str = ""
    error: str = ""        # why nbdev's processing failed


def _config(root: Path) -> tuple[Path, str]:
    "The notebook folder and the site's URL (links to it become relative) from `settings.ini`."
    cfg = configparser.ConfigParser(delimiters=["="])
    if not cfg.read(root / "settings.ini"): raise FileNotFoundError(f"{root / 'settings.ini'} not found; expected an nbdev project root")
    d = cfg["DEFAULT"]
    return root / d.get("nbs_path", "nbs"), d.get("doc_host", "") + d.get("doc_baseurl", "")


def _process_one(root: Path, src: Path, dst: Path) -> str:
    "Run nbdev's docs processors on one notebook (in a worker, from the project root); '' or the error."
    from nbdev.processors import FilterDefaults
    from nbdev.serve_drv import main
    os.chdir(root)  # nbdev finds settings.ini from the working directory
    main_module = sys.modules["__main__"]
    try: main((src, dst, FilterDefaults))
    except Exception as e:
        causes = [e] + ([e.__cause__] if e.__cause__ else [])
        return " <- ".join(f"{type(c).__name__}: {str(c).splitlines()[0] if str(c) else ''}" for c in causes)
    finally: sys.modules["__main__"] = main_module  # IPython's shell replaced it; the next task unpickles from it
    return ""


def process_notebooks(root: Path, nbs: Path, proc: Path) -> dict[str, str]:
    "nbdev-process every notebook of `nbs` into `proc`; returns {notebook name: error} for failures."
    notebooks = sorted(p for p in nbs.glob("*.ipynb") if not p.name.startswith(("_", ".")))
    shutil.rmtree(proc, ignore_errors=True)
    proc.mkdir(parents=True)
    workers = max(1, min(os.cpu_count() or 1, len(notebooks)))
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        errors = pool.map(_process_one, [root] * len(notebooks), notebooks, [proc / p.name for p in notebooks])
        return {p.name: err for p, err in zip(notebooks, errors) if err}


def read_processed(path: Path):
    "A notebook nbdev processed, without nbdev's `has_sd` marker on show_doc cells (not in the notebook schema)."
    nb = nbformat.v4.reads(path.read_text(encoding="utf-8"))  # no validation: it would complain of has_sd
    for cell in nb.cells: cell.pop("has_sd", None)
    return nb


def _is_frontmatter(cell) -> bool: return cell.cell_type == "raw" and cell.source.lstrip().startswith("---")


def _frontmatter(nb) -> dict:
    "The YAML frontmatter nbdev put in a raw cell (title, description, output-file)."
    cell = next((c for c in nb.cells if _is_frontmatter(c)), None)
    if cell is None: return {}
    return yaml.safe_load(cell.source.strip().strip("-")) or {}


def read_pages(nbs: Path, proc: Path, errors: dict[str, str]) -> dict[str, Page]:
    "A `Page` per notebook of `nbs`, named and titled from its processed copy's frontmatter."
    pages = {}
    for src in sorted(p for p in nbs.glob("*.ipynb") if not p.name.startswith(("_", "."))):
        if src.name in errors: pages[src.name] = Page(src.name, None, src.stem, error=errors[src.name]); continue
        fm = _frontmatter(read_processed(proc / src.name))
        pages[src.name] = Page(src.name, fm.get("output-file", src.stem + ".html"),
                               str(fm.get("title", src.stem)), str(fm.get("description", "")))
    return pages


def sidebar_sections(contents: list, title: str = "") -> list[dict]:
    "`website.sidebar.contents` as a flat list of {title, files}: top-level files first, one entry per section."
    files = [e if isinstance(e, str) else e["href"] for e in contents if isinstance(e, str) or "href" in e]
    out = [{"title": title, "files": files}] if files else []
    for e in contents:
        if isinstance(e, dict) and "section" in e: out += sidebar_sections(e.get("contents", []), e["section"])
    return out


def _rewrite_links(text: str, pages: dict[str, Page], site_url: str) -> str:
    "Links to the published site or to `x.ipynb` become relative links to the preview's pages."
    if site_url: text = text.replace(site_url.rstrip("/") + "/", "")
    def href(m): return pages[m[1]].href if m[1] in pages and pages[m[1]].href else m[1]
    return re.sub(r"(?<=\]\()([\w.-]+\.ipynb)", href, text)


LINK_ATTRIBUTES = re.compile(r"\[([^\]]*)\]\(([^)\s]+)\)\{([^}]*)\}")
ATTRIBUTE = re.compile(r'([\w-]+)="([^"]*)"|([.#])([\w-]+)')


def quarto_link_attributes(text: str) -> str:
    """Quarto's `[text](url){key="value" .class #id}`, which nbconvert would show as text: alone on its line (nbdev's
    `[source](...)` of every API entry) an HTML paragraph holding the link with those attributes (markdown passes an
    HTML block through whole; an inline tag it would split), inside a line the plain link."""
    def html_link(m):
        attrs, classes = {"href": m[2]}, []
        for a in ATTRIBUTE.finditer(m[3]):
            if a[1]: attrs[a[1]] = a[2]
            elif a[3] == ".": classes.append(a[4])
            else: attrs["id"] = a[4]
        if classes: attrs["class"] = " ".join(classes)
        return "<p><a " + " ".join(f'{k}="{html.escape(v)}"' for k, v in attrs.items()) + f">{html.escape(m[1])}</a></p>"
    lines = [html_link(m) if (m := LINK_ATTRIBUTES.fullmatch(line.strip())) else LINK_ATTRIBUTES.sub(r"[\1](\2)", line)
             for line in text.split("\n")]
    return "\n".join(lines)


def docstring_lists(text: str) -> str:
    """A docstring section heading (`Shape:`, `Args:`, ...) followed by an indented `- ` list, as markdown reads a list:
    a blank line before it and the items at the margin (indented, markdown runs them into the heading's paragraph)."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        out.append(lines[i])
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if re.fullmatch(r"[A-Z][\w ]*:", lines[i].strip()) and re.match(r"\s+- ", nxt):
            indent = len(nxt) - len(nxt.lstrip())
            out.append("")
            while i + 1 < len(lines) and lines[i + 1].startswith(" " * indent) and lines[i + 1].strip():
                i += 1
                out.append(lines[i][indent:])
            out.append("")
        i += 1
    return "\n".join(out)


def prepare_markdown(text: str, pages: dict[str, Page], site_url: str) -> str:
    return docstring_lists(quarto_link_attributes(_rewrite_links(text, pages, site_url)))


def prepare_cells(nb, pages: dict[str, Page], site_url: str):
    """The frontmatter goes (the page header shows it), Quarto's cell options become nbconvert tags, links relative,
    link attributes HTML and docstring lists markdown lists."""
    nb.cells = [c for c in nb.cells if not _is_frontmatter(c)]
    for cell in nb.cells:
        if cell.cell_type == "markdown": cell.source = prepare_markdown(cell.source, pages, site_url)
        if cell.cell_type != "code": continue
        lines = cell.source.splitlines()
        options = [DIRECTIVE.match(l) for l in lines]
        tags = [DIRECTIVE_TAGS[(m[1], m[2].lower())] for m in options if m and (m[1], m[2].lower()) in DIRECTIVE_TAGS]
        cell.metadata["tags"] = cell.metadata.get("tags", []) + tags
        cell.source = "\n".join(l for l, m in zip(lines, options) if not m).strip("\n")
        for out in cell.get("outputs", []):
            if "text/markdown" in out.get("data", {}):
                out.data["text/markdown"] = prepare_markdown(out.data["text/markdown"], pages, site_url)
    return nb


def copy_mathjax(out: Path) -> bool:
    "Copy MathJax (`MATHJAX_PARTS` of the first of `MATHJAX_DIRS` that has it) into `out/mathjax`; False when none has it."
    src = next((d for d in MATHJAX_DIRS if (d / "MathJax.js").exists()), None)
    if src is None: return False
    for part in MATHJAX_PARTS:
        if (src / part).is_dir(): shutil.copytree(src / part, out / "mathjax" / part, dirs_exist_ok=True)
        else:
            (out / "mathjax" / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src / part, out / "mathjax" / part)
    return True


def make_exporter(mathjax_url: str | None = None) -> HTMLExporter:
    "nbconvert's lab HTML with our sidebar; output images are data URIs, markdown images embedded too."
    exporter = HTMLExporter(template_name="lab", embed_images=True, exclude_input_prompt=True,
                            exclude_output_prompt=True, extra_loaders=[jinja2.DictLoader({"preview.html.j2": PAGE_TEMPLATE})])
    if mathjax_url: exporter.mathjax_url = mathjax_url
    exporter.template_file = "preview.html.j2"
    exporter.register_preprocessor(TagRemovePreprocessor(remove_cell_tags={"remove_cell"}, remove_input_tags={"remove_input"},
                                                         remove_all_outputs_tags={"remove_output"}), enabled=True)
    return exporter


def render_pages(pages: dict[str, Page], sections: list[dict], nbs: Path, proc: Path, out: Path,
                 site_title: str, site_url: str, mathjax_url: str | None = None):
    "Write one HTML file per built page into `out`; markdown images are read relative to `nbs`."
    nav = [{"title": s["title"], "pages": [pages[f] for f in s["files"] if f in pages]} for s in sections]
    listed = {p.source for s in nav for p in s["pages"]}
    unlisted = [p for name, p in pages.items() if name not in listed]  # Quarto renders them too
    if unlisted: nav.append({"title": "Other pages", "pages": unlisted})
    home = next((p.href for s in nav for p in s["pages"] if p.href), "index.html")
    exporter = make_exporter(mathjax_url)
    for page in pages.values():
        if not page.href: continue
        nb = prepare_cells(read_processed(proc / page.source), pages, site_url)
        resources = {"metadata": {"name": page.title, "path": str(nbs)},
                     "preview": {"sections": nav, "href": page.href, "home": home, "site_title": site_title,
                                 "title": page.title, "description": page.description}}
        html, _ = exporter.from_notebook_node(nb, resources=resources)
        (out / page.href).write_text(html, encoding="utf-8")


def build_preview(root: Path, out: Path | None = None) -> dict[str, Page]:
    "Process and render the book at `root` into `out` (default `root/_docs`); returns the pages by notebook."
    root = Path(root).resolve()
    nbs, site_url = _config(root)
    out = Path(out) if out else root / "_docs"
    quarto = yaml.safe_load((nbs / "_quarto.yml").read_text())
    errors = process_notebooks(root, nbs, root / "_proc")
    pages = read_pages(nbs, root / "_proc", errors)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    site = quarto.get("website", {})
    mathjax = copy_mathjax(out)
    if not mathjax: print("docs: MathJax is not installed here (Debian's libjs-mathjax; `make browser` installs it): "
                          "the pages load it from its CDN and need the network for equations", file=sys.stderr)
    render_pages(pages, sidebar_sections(site.get("sidebar", {}).get("contents", [])), nbs, root / "_proc", out,
                 str(site.get("title", root.name)), site_url, MATHJAX_URL if mathjax else None)
    return pages


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1], help="the nbdev project (settings.ini)")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: ROOT/_docs)")
    args = ap.parse_args(argv)
    out = args.out or args.root / "_docs"
    pages = build_preview(args.root, out)
    failed = [p for p in pages.values() if p.error]
    for p in failed: print(f"docs: {p.source} failed nbdev's docs processing (nbdev_docs fails there too): {p.error}", file=sys.stderr)
    print(f"docs: preview of {len(pages) - len(failed)} pages in {out}/ (open {out / 'index.html'})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

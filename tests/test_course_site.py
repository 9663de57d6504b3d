"""The course site (make html, tools/course_site.py): built from the committed notebooks, never executing
them; it opens from disk and loads nothing from the network. Its behaviour in a browser (navigation,
search, formulas, images): test_site_browser.py."""

import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest
from conftest import load_tool

ROOT = Path(__file__).resolve().parents[1]
course_site = load_tool("course_site")
editions = load_tool("editions")
NOTEBOOKS = editions.chapter_notebooks(ROOT)


def test_site_opens_from_disk(built_site):
    site = built_site.parent
    pages = sorted(p.name for p in (site / "notebooks").glob("[0-9][0-9]_*.html"))
    assert pages == [p.stem + ".html" for p in NOTEBOOKS]
    landing = built_site.read_text(encoding="utf-8")
    assert all(f'href="notebooks/{page}"' in landing for page in pages)
    for page in [built_site, *(site / "notebooks" / p for p in pages)]:
        body = page.read_text(encoding="utf-8")
        for ref in re.findall(r'<(?:script|link|img)\b[^>]*\b(?:src|href)="([^"#?]+)', body):
            if not re.match(r"(?:[a-z]+:|//)", ref):  # every local script, style and image is in the site
                assert (page.parent / ref).is_file(), f"{page.name} refers to missing {ref}"
    for page in site.rglob("*.html"):  # opens with no network: no script, stylesheet or frame from elsewhere
        body = page.read_text(encoding="utf-8")
        remote = re.findall(r'<(?:script|link|iframe|img)\b[^>]*\b(?:src|href)\s*=\s*["\']?((?:https?:)?//[^"\' >]+)', body)
        assert not remote, f"{page.name} loads {remote[:3]}"
        assert "cdnjs" not in body and "unpkg.com" not in body and "cdn.jsdelivr" not in body, page.name


def test_site_serves_mathjax_itself_on_pages_with_formulas(built_site):
    site = built_site.parent
    with_math = [p for p in (site / "notebooks").glob("*.html") if 'class="math' in p.read_text(encoding="utf-8")]
    assert with_math, "no chapter writes a formula (chapter 02 does)"
    for page in with_math:
        scripts = re.findall(r'<script[^>]*src="([^"?]*mathjax[^"?]*)', page.read_text(encoding="utf-8"))
        assert scripts and all((page.parent / s).is_file() for s in scripts), page.name


def test_the_first_code_cell_is_collapsed_and_widget_outputs_are_dropped():
    nb = nbformat.read(str(NOTEBOOKS[1]), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    code[1].outputs.append(nbformat.v4.new_output("execute_result", data={course_site.WIDGET_MIME: {},
                                                                           "text/plain": "interactive(...)"}))
    shown = course_site.site_notebook(nb)
    shown_code = [c for c in shown.cells if c.cell_type == "code"]
    assert shown_code[0].metadata["tags"].count("hide-cell") == 1
    assert not any(course_site.WIDGET_MIME in o.get("data", {}) for c in shown_code for o in c.outputs)
    assert "hide-cell" not in code[0].metadata.get("tags", []), "the committed notebook was changed"
    assert [c.source for c in shown.cells] == [c.source for c in nb.cells]
    with pytest.raises(ValueError, match="install cell"):
        course_site.site_notebook(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# x")]))


def test_the_landing_page_shows_headlines_literally():
    page = course_site.landing_page([("00_a", "00 · A `code` title", 42.0, "1.10x [1.05, 1.16] at $5 *not* bold")],
                                    "x86_64, AVX2")
    assert "## [00 · A `code` title](notebooks/00_a.ipynb)" in page
    assert r"1.10x \[1.05, 1.16\] at \$5 \*not\* bold" in page and "*0.7 min to execute.*" in page
    assert "notebooks/00_a" in page.split("{toctree}")[1]


def test_site_refuses_a_notebook_that_failed(tmp_path):
    (tmp_path / "notebooks").mkdir()
    shutil.copy(NOTEBOOKS[0], tmp_path / "notebooks" / NOTEBOOKS[0].name)
    nb = json.loads((tmp_path / "notebooks" / NOTEBOOKS[0].name).read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    code[-1]["outputs"] = [{"output_type": "error", "ename": "AssertionError", "evalue": "", "traceback": []}]
    (tmp_path / "notebooks" / NOTEBOOKS[0].name).write_text(json.dumps(nb))
    with pytest.raises(RuntimeError, match="AssertionError"):
        course_site.stage(root=tmp_path, stage_dir=tmp_path / "src")
    assert course_site.main(["--root", str(tmp_path), "--out", str(tmp_path / "site"),
                             "--stage", str(tmp_path / "src")]) == 1
    assert not (tmp_path / "site").exists()


def test_html_tables_from_the_notebooks_are_rendered(built_site):
    for path in NOTEBOOKS:  # a DataFrame's HTML output becomes a table on the page, not its text/plain form
        nb = nbformat.read(str(path), as_version=4)
        tables = sum(o.get("data", {}).get("text/html", "").count("<table") for c in nb.cells
                     if c.cell_type == "code" for o in c.outputs)
        page = (built_site.parent / "notebooks" / f"{path.stem}.html").read_text(encoding="utf-8")
        assert page.count("<table") >= tables, path.stem

"""The course site: the committed, executed chapter notebooks rendered by Sphinx + myst-nb.

Build tooling, not part of the installed package. From the repository root (``make html`` runs it)::

    python tools/course_site.py             # site/index.html, opens from disk or from any static server
    python tools/course_site.py --out DIR

It never executes a notebook: it refuses one that is unexecuted or holds an error, then renders what is
committed. The notebooks are copied to a staging folder first (``build/site-src`` unless ``--stage``) and
only the copies are changed: the first code cell (the open-anywhere install cell) is tagged ``hide-cell``
(collapsed, one click opens it) and ipywidgets outputs are dropped (the static figure drawn before them
stays; sliders need a kernel). The landing page lists each chapter's ``Headline:`` and its execution time,
from the same functions as RESULTS.md (tools/editions.py). MathJax 3 is copied from the pinned
``sphinx-mathjax-offline`` package into the site's ``_static/mathjax``: formulas render with no network.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import editions  # noqa: E402  (tools/ is not a package; editions.py lives next to this file)

ROOT = Path(".")
CONFIG = Path(__file__).resolve().parent / "site_config" / "conf.py"
MATHJAX_PACKAGE = "sphinx-mathjax-offline"  # a PyPI package that carries MathJax 3.2.2's files
MATHJAX_ENTRY = "tex-svg.js"  # the one combined MathJax build the site loads (conf.py's mathjax_path)
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
HIDE_TAG = "hide-cell"
INSTALL_CELL_PROMPT = "Show the install cell (needed only outside a clone of the course, e.g. on Colab)"
MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_\[\]<>$|#~{}])")


def _escape_markdown(text: str) -> str:
    """Text shown literally in MyST markdown: a headline's ``[1.05, 1.16]`` or ``$`` stays text."""
    return MARKDOWN_PUNCTUATION.sub(r"\\\1", text)


def site_notebook(nb):
    """A copy of an executed notebook as the site shows it: install cell collapsed, widget outputs dropped."""
    import copy

    nb = copy.deepcopy(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    if not code:
        raise ValueError("a chapter notebook needs at least one code cell (the install cell)")
    tags = code[0].metadata.setdefault("tags", [])
    if HIDE_TAG not in tags:
        tags.append(HIDE_TAG)
    code[0].metadata.setdefault("mystnb", {}).update(code_prompt_show=INSTALL_CELL_PROMPT)
    for cell in code:
        cell.outputs = [o for o in cell.get("outputs", []) if WIDGET_MIME not in o.get("data", {})]
    nb.metadata.pop("widgets", None)
    return nb


def landing_page(chapters: list[tuple[str, str, float | None, str]], machine: str) -> str:
    """The site's index.md: each chapter's title (linked), execution time and headline; the hidden toctree
    that makes the sidebar and the previous/next links follow the reading order."""
    lines = ["# DeepLSP pruning course", "",
             "Neural-network pruning in PyTorch, taught by executed notebooks: every number on these pages was "
             "measured by the code above it, on real data (FashionMNIST images; the King James Bible as text in "
             "chapter 09), on a laptop CPU. Read the chapters "
             "in order; each ends with a summary and exercises.", "",
             f"The pages show the committed run, executed on a 2-core {_escape_markdown(machine)}. "
             "Under each chapter: how long it takes to execute, and its headline result.", ""]
    for stem, title, secs, headline in chapters:
        lines += [f"## [{title}](notebooks/{stem}.ipynb)", "",  # the title is the notebook's own markdown
                  f"*{editions._minutes(secs)} to execute.* {_escape_markdown(headline)}", ""]
    lines += ["```{toctree}", ":hidden:", ":maxdepth: 2", ""]
    lines += [f"notebooks/{stem}" for stem, *_ in chapters]
    lines += ["```", ""]
    return "\n".join(lines)


def mathjax_dir() -> Path:
    """Where the installed ``sphinx-mathjax-offline`` package keeps MathJax's files."""
    spec = importlib.util.find_spec(MATHJAX_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the site needs the Python package {MATHJAX_PACKAGE!r} (MathJax for offline math): "
                           "run make setup, or pip install -e '.[site]'")
    folder = Path(list(spec.submodule_search_locations)[0]) / "static" / "mathjax"
    if not (folder / MATHJAX_ENTRY).is_file():
        raise RuntimeError(f"{folder / MATHJAX_ENTRY} is missing: reinstall {MATHJAX_PACKAGE}")
    return folder


def _copy_mathjax(static: Path) -> None:
    """MathJax's SVG build plus the components its menu or a ``\\require`` loads on demand (accessibility
    explorer, menu, TeX extensions); the other combined builds and the 4 MB speech engine are left out."""
    source = mathjax_dir()
    target = static / "mathjax"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / MATHJAX_ENTRY, target / MATHJAX_ENTRY)
    for sub in ["a11y", "ui", "input/tex/extensions"]:
        if (source / sub).is_dir():
            shutil.copytree(source / sub, target / sub, dirs_exist_ok=True)


def stage(root: Path | str = ROOT, stage_dir: Path | str | None = None) -> Path:
    """Write Sphinx's source folder: conf.py and _static/ from tools/site_config, index.md, the notebooks as
    the site shows them, images/, _static/mathjax. Fails on an unexecuted or failed notebook."""
    import nbformat

    root = Path(root)
    stage_dir = Path(stage_dir) if stage_dir else root / "build" / "site-src"
    if stage_dir.exists():
        shutil.rmtree(stage_dir)
    (stage_dir / "notebooks").mkdir(parents=True)
    chapters = []
    for path in editions.chapter_notebooks(root):
        nb = nbformat.read(str(path), as_version=4)
        problems = editions.executed_problems(nb)
        if problems:
            raise RuntimeError(f"{path.name}: " + "; ".join(problems))
        nbformat.write(site_notebook(nb), str(stage_dir / "notebooks" / path.name))
        chapters.append((path.stem, editions._title(nb), editions.wall_time(nb), editions.headline(nb)))
    (stage_dir / "index.md").write_text(landing_page(chapters, editions.executed_on(root)), encoding="utf-8")
    shutil.copy2(CONFIG, stage_dir / "conf.py")
    shutil.copytree(CONFIG.parent / "_static", stage_dir / "_static")
    if (root / "images").is_dir():
        shutil.copytree(root / "images", stage_dir / "images",
                        ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    _copy_mathjax(stage_dir / "_static")
    return stage_dir


def build_site(root: Path | str = ROOT, out: Path | str | None = None, stage_dir: Path | str | None = None,
               quiet: bool = True) -> Path:
    """Stage the sources and run ``sphinx-build`` (warnings are errors); returns ``out/index.html``.

    Sphinx writes into a folder next to the staging folder (myst-nb puts its extracted figures beside its
    output folder, so they stay in ``build/``), then the result replaces ``out``."""
    root = Path(root)
    out = Path(out) if out else root / "site"
    source = stage(root, stage_dir)
    html_dir = source.parent / (source.name + "-html")
    for folder in (html_dir, source.parent / (source.name + "-doctrees")):
        if folder.exists():
            shutil.rmtree(folder)
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-E",
           "-d", str(source.parent / (source.name + "-doctrees")), str(source), str(html_dir)]
    if quiet:
        cmd.insert(3, "-q")
    result = subprocess.run(cmd, capture_output=quiet, text=True)
    if result.returncode != 0:
        detail = (result.stderr or "").strip()[-3000:] if quiet else ""
        raise RuntimeError(f"sphinx-build failed (exit {result.returncode})" + (f":\n{detail}" if detail else ""))
    for source_map in html_dir.glob("_static/**/*.map"):  # debugging aids for the theme's minified scripts
        source_map.unlink()
    if out.exists():
        shutil.rmtree(out)
    shutil.move(str(html_dir), str(out))
    return out / "index.html"


def site_size(out: Path | str) -> int:
    """Bytes of every file under ``out``."""
    return sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/course_site.py", description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=str(ROOT), help="the course checkout (default: the current folder)")
    parser.add_argument("--out", default=None, help="where to write the site (default: site/)")
    parser.add_argument("--stage", default=None, help="Sphinx's source folder (default: build/site-src)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        index = build_site(args.root, args.out, args.stage)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {index} ({site_size(index.parent) / 2**20:.1f} MiB) in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

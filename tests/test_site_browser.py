"""The course site in a real browser: headless Chromium, driven by Playwright, opening the built pages from disk.

Skipped, with the reason, where Playwright or a Chromium is not installed (``.ci/run`` installs Debian's
``chromium`` and sets ``DEEPLSP_REQUIRE_SITE_CHECKS``, which turns the skip into a failure). Another browser
binary: ``DEEPLSP_CHROMIUM=/path/to/chrome``. The pages are opened as ``file://`` URLs, the harder case for
search (no server); any request that is not for a local file is blocked and reported.
"""

import os
import re
import shutil
from pathlib import Path

import nbformat
import pytest
from conftest import load_tool, skip_or_fail

ROOT = Path(__file__).resolve().parents[1]
editions = load_tool("editions")
CHAPTERS = [p.stem for p in editions.chapter_notebooks(ROOT)]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
TIMEOUT_MS = 30_000
CODE_SPAN = re.compile(r"```.*?```|`[^`\n]*`|\$[^$]*\$|\]\([^)]*\)", re.S)  # code, formulas, link targets


def chromium_path() -> str | None:
    """The browser binary: ``$DEEPLSP_CHROMIUM``, else the first Chromium or Chrome on PATH."""
    if os.environ.get("DEEPLSP_CHROMIUM"):
        return os.environ["DEEPLSP_CHROMIUM"]
    return next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def word_in_one_chapter(root: Path = ROOT) -> tuple[str, str]:
    """``(word, chapter)``: a word of 8+ letters in one chapter's prose (not code or math) whose first 6 letters (a stem's
    worth: search matches stems) appear in no other chapter, in no code or output, and not on the landing
    page (titles and headlines). The longest such word, alphabetically first among equals."""
    prose, everything, landing = {}, {}, set()
    for path in editions.chapter_notebooks(root):
        nb = nbformat.read(str(path), as_version=4)
        prose[path.stem] = set().union(*(_words(CODE_SPAN.sub(" ", c.source)) for c in nb.cells
                                         if c.cell_type == "markdown"))
        outputs = [o.get("text", "") + "".join(v for v in o.get("data", {}).values() if isinstance(v, str))
                   for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        everything[path.stem] = set().union(prose[path.stem], *(_words(c.source) for c in nb.cells), *map(_words, outputs))
        landing |= _words(editions._title(nb)) | _words(editions.headline(nb))
    candidates = []
    for stem, words in prose.items():
        others = set().union(*(w for s, w in everything.items() if s != stem)) | landing
        other_prefixes = {w[:6] for w in others}
        candidates += [(word, stem) for word in words if len(word) >= 8 and word[:6] not in other_prefixes]
    if not candidates:
        raise AssertionError("no word appears in exactly one chapter")
    return min(candidates, key=lambda pair: (-len(pair[0]), pair[0]))


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed "
                                   "(make setup installs it: the optional extra 'site')")
    executable = chromium_path()
    if executable is None:
        skip_or_fail("no Chromium to drive: install Debian's chromium (apt-get install chromium), "
                     "or set DEEPLSP_CHROMIUM to a Chromium or Chrome binary")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        yield browser
        browser.close()


class Tab:
    """One browser page that records console errors, uncaught exceptions and every non-local request."""

    def __init__(self, browser):
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.page.set_default_timeout(TIMEOUT_MS)
        self.errors, self.remote = [], []
        self.page.on("console", lambda msg: msg.type == "error" and self.errors.append(f"{self.name}: {msg.text}"))
        self.page.on("pageerror", lambda exc: self.errors.append(f"{self.name}: {exc}"))
        self.page.on("request", lambda req: None if req.url.startswith(("file:", "data:", "blob:", "about:"))
                     else self.remote.append(req.url))
        self.page.route(re.compile(r"^(https?|wss?|ftp):"), lambda route: route.abort())

    @property
    def name(self) -> str:
        return Path(self.page.url.split("?")[0].split("#")[0]).stem

    def goto(self, path: Path, query: str = ""):
        self.page.goto(path.as_uri() + query, wait_until="load")

    def click(self, selector: str):
        with self.page.expect_navigation(wait_until="load"):
            self.page.locator(selector).first.click()

    def broken_images(self) -> list[str]:
        self.page.evaluate("() => { for (const img of document.images) img.loading = 'eager'; }")
        self.page.wait_for_function("() => Array.from(document.images).every(img => img.complete)")
        return self.page.evaluate(
            "() => Array.from(document.images).filter(img => img.naturalWidth === 0).map(img => img.src)")

    def close(self):
        self.page.close()


@pytest.fixture
def tab(browser):
    tab = Tab(browser)
    yield tab
    assert not tab.remote, f"pages requested from the network: {tab.remote[:5]}"
    tab.close()


def test_sidebar_reaches_every_chapter_with_its_images_and_no_errors(tab, built_site):
    tab.goto(built_site)
    sidebar = tab.page.locator("nav.bd-docs-nav a.reference.internal")
    targets = [Path(href.split("#")[0]).stem for href in sidebar.evaluate_all("links => links.map(a => a.href)")]
    assert targets == ["index", *CHAPTERS], f"sidebar order: {targets}"
    images = 0
    for stem in CHAPTERS:  # from each page, the sidebar link to the next chapter
        tab.click(f"nav.bd-docs-nav a.reference.internal[href$='{stem}.html']")
        assert tab.name == stem
        assert tab.page.locator("h1").first.inner_text().startswith(stem[:2])
        assert not tab.broken_images(), f"{stem}: images that did not load: {tab.broken_images()[:3]}"
        images += tab.page.evaluate("() => document.images.length")
        assert tab.page.locator("#pst-page-toc-nav a").count() >= 2, f"{stem}: no in-page table of contents"
    assert images >= len(CHAPTERS), f"only {images} images on the chapter pages"
    assert not tab.errors, tab.errors[:5]


def plain_quotes(text):
    """The page's text with Sphinx's typographic quotes (smartquotes) turned back into the notebook's plain ones."""
    return text.translate(str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'}))


def test_the_landing_page_shows_each_chapters_headline_and_time(tab, built_site):
    tab.goto(built_site)
    text = tab.page.locator("article").inner_text()
    for path in editions.chapter_notebooks(ROOT):
        nb = nbformat.read(str(path), as_version=4)
        assert editions.headline(nb)[:40] in plain_quotes(text), path.stem
        assert f"{editions._minutes(editions.wall_time(nb))} to execute" in text, path.stem
    assert not tab.errors, tab.errors[:5]


def test_install_cells_are_collapsed(tab, built_site):
    for stem in CHAPTERS:
        tab.goto(built_site.parent / "notebooks" / f"{stem}.html")
        first_cell = tab.page.locator("div.cell").first
        assert "tag_hide-cell" in first_cell.get_attribute("class"), stem
        assert not first_cell.locator("div.cell_input").is_visible(), f"{stem}: the install cell is open"
    assert not tab.errors, tab.errors[:5]


def test_formulas_render_as_math(tab, built_site):
    pages = [built_site.parent / "notebooks" / f"{stem}.html" for stem in CHAPTERS]
    with_math = [page for page in pages if 'class="math' in page.read_text(encoding="utf-8")]
    assert with_math, "no chapter has a formula"
    for page in with_math:
        tab.goto(page)
        tab.page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.document")
        tab.page.evaluate("() => MathJax.startup.promise")
        formulas = tab.page.locator(".math")
        rendered = tab.page.locator(".math mjx-container svg")
        assert formulas.count() > 0 and rendered.count() == formulas.count(), \
            f"{page.stem}: {rendered.count()} of {formulas.count()} formulas rendered"
        raw = tab.page.evaluate(r"() => Array.from(document.querySelectorAll('article p, article td'))"
                                r".map(e => e.innerText).filter(t => /\$[^$\s][^$]*\$|\\\(|\\frac/.test(t))")
        assert not raw, f"{page.stem}: LaTeX shown as text: {raw[:2]}"
    assert not tab.errors, tab.errors[:5]


def test_next_and_previous_reach_every_chapter(tab, built_site):
    tab.goto(built_site)
    forward = [tab.name]
    while tab.page.locator("a.right-next").count():
        tab.click("a.right-next")
        forward.append(tab.name)
    assert forward == ["index", *CHAPTERS], forward
    backward = [tab.name]
    while tab.page.locator("a.left-prev").count():
        tab.click("a.left-prev")
        backward.append(tab.name)
    assert backward == forward[::-1], backward
    assert not tab.errors, tab.errors[:5]


def test_search_finds_the_one_chapter_with_a_word(tab, built_site):
    word, chapter = word_in_one_chapter()
    tab.goto(built_site.parent / "notebooks" / f"{CHAPTERS[0]}.html")
    tab.page.locator("button.search-button__button:visible").first.click()
    field = tab.page.locator("#pst-search-dialog input[name=q]")
    field.fill(word)
    with tab.page.expect_navigation(wait_until="load"):
        field.press("Enter")
    assert tab.name == "search"
    tab.page.wait_for_selector("#search-results ul.search li a")
    hits = tab.page.locator("#search-results ul.search li a").evaluate_all("links => links.map(a => a.href)")
    found = {Path(href.split("?")[0].split("#")[0]).stem for href in hits}
    assert chapter in found, f"searching {word!r} (only in {chapter}) found {sorted(found)}"
    assert not tab.errors, tab.errors[:5]

"""Sphinx configuration of the course site, copied into the staging folder by tools/course_site.py.

Sphinx + myst-nb render the committed, executed notebooks (never executed here) with sphinx-book-theme:
sidebar in reading order, previous/next links, an in-page table of contents, full-text search. MathJax 3
is served from the site's own _static/ (copied there by tools/course_site.py), so nothing is loaded from
the network when a page is read.
"""

project = "DeepLSP pruning course"
author = "DeepLSP pruning course contributors"
copyright = "the DeepLSP pruning course contributors, MIT licence"
extensions = ["myst_nb"]
exclude_patterns = ["_build", "**.ipynb_checkpoints"]

# Notebooks: the committed outputs, as they are
nb_execution_mode = "off"
nb_merge_streams = False  # outputs in the order the cell produced them (a print after a table stays after it)
nb_ipywidgets_js = {}  # no require.js / widget manager from a CDN (the build drops widget outputs)
myst_enable_extensions = ["dollarmath", "amsmath"]  # $…$, $$…$$ and \begin{align} as in JupyterLab
myst_heading_anchors = 3

# Math offline: MathJax 3 from _static/ (SVG output: glyphs drawn in the page, no web fonts to fetch)
mathjax_path = "mathjax/tex-svg.js"

html_theme = "sphinx_book_theme"
html_title = "DeepLSP pruning course"
html_static_path = ["_static"]
html_copy_source = False  # no _sources/ copies of the notebooks: the site stays small
html_show_sourcelink = False
html_last_updated_fmt = None
html_theme_options = {
    "home_page_in_toc": True,  # the landing page first in the sidebar
    "show_toc_level": 2,  # in-page table of contents: sections and their subsections
    "show_navbar_depth": 1,
    "use_download_button": False,
    "use_fullscreen_button": False,
    "navigation_with_keys": False,
}
# light unless the reader picks another mode (the figures are drawn on white); without a default the
# theme logs a console error on a first visit
html_context = {"default_mode": "light"}
html_css_files = ["tables.css"]  # result tables: rules, padding, numbers aligned right
html_js_files = ["offline_search.js"]  # search from file://: no per-hit page fetch (see the file)

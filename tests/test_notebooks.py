"""Hygiene of the committed notebooks: executed top to bottom, clean, portable, small."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_LIMIT_S = 60  # no cell may run longer: long work is split into cells that each say what they did
TALKS_AFTER_S = 20  # a cell that runs longer prints progress (at least two lines) while it runs
ABSOLUTE_PATH = re.compile(r"(/work/|/home/|/root/|/Users/|/tmp/|/private/var/|[A-Z]:\\\\|site-packages)")


def test_there_are_notebooks():
    assert any(p.name.startswith("00_") for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_executed_and_clean(path):
    assert path.stat().st_size < 2 * 1024 * 1024, "notebook larger than 2 MB"
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    counts = [c["execution_count"] for c in code]
    assert counts == list(range(1, len(code) + 1)), f"execution counts {counts}"
    for i, cell in enumerate(code, 1):
        for out in cell.get("outputs", []):
            assert out["output_type"] != "error", f"cell {i} holds an error"
            text = json.dumps(out.get("text", "")) + json.dumps(out.get("data", {}).get("text/plain", ""))
            assert not ABSOLUTE_PATH.search(text), f"cell {i} output shows a machine path: {ABSOLUTE_PATH.search(text)[0]}"
    first = "".join(code[0]["source"]) + "".join(code[1]["source"]) if len(code) > 1 else ""
    assert "seed_everything" in first, "the first cells must seed"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_cell_runs_too_long_and_long_cells_report_progress(path):
    from datetime import datetime

    def stamp(text):
        return datetime.fromisoformat(text.replace("Z", "+00:00"))

    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    for i, cell in enumerate(code, 1):
        ex = cell.get("metadata", {}).get("execution", {})
        assert "iopub.execute_input" in ex and "shell.execute_reply" in ex, f"cell {i} has no execution times"
        secs = (stamp(ex["shell.execute_reply"]) - stamp(ex["iopub.execute_input"])).total_seconds()
        assert secs <= CELL_LIMIT_S, f"cell {i} ran {secs:.0f} s (limit {CELL_LIMIT_S} s): split it"
        if secs > TALKS_AFTER_S:
            printed = "".join("".join(o.get("text", "")) for o in cell.get("outputs", [])
                              if o.get("output_type") == "stream")
            assert len(printed.strip().splitlines()) >= 2, f"cell {i} ran {secs:.0f} s without reporting progress"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_images_referenced_in_markdown_exist(path):
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            for ref in re.findall(r"\]\((\.\./images/[^)]+)\)", "".join(cell["source"])):
                assert (path.parent / ref).resolve().is_file(), ref


def test_every_image_is_made_by_the_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_images", ROOT / "images" / "make_images.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert sorted(p.name for p in (ROOT / "images").glob("*.png")) == sorted(module.FIGURES)

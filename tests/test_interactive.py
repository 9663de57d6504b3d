"""interactive.explore: a static figure always, sliders where ipywidgets is installed, clear errors."""

import sys

import pytest

from deeplsp_helpers import interactive


def test_draws_the_start_values_then_returns_live_controls():
    calls = []
    widget = interactive.explore(lambda sparsity, kind: calls.append((sparsity, kind)), start={"sparsity": 0.5},
                                 sparsity=[0.25, 0.5, 0.75], kind=["fine", "2:4"])
    assert calls[0] == (0.5, "fine")
    controls = {w.description: w for w in widget.children if hasattr(w, "options")}
    assert list(controls["sparsity"].options) == [0.25, 0.5, 0.75] and controls["sparsity"].value == 0.5
    controls["sparsity"].value = 0.75
    assert calls[-1] == (0.75, "fine")  # moving the slider redraws


def test_without_ipywidgets_the_static_figure_is_all(monkeypatch):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import fails as in a bare environment
    calls = []
    assert interactive.explore(lambda ratio: calls.append(ratio), ratio=[0.2, 0.4]) is None
    assert calls == [0.2]


@pytest.mark.parametrize("args,kwargs,error", [
    ((None,), {"x": [1]}, TypeError),
    ((print,), {}, ValueError),
    ((print,), {"x": []}, ValueError),
    ((print,), {"x": "abc"}, ValueError),
    ((print, {"x": 3}), {"x": [1, 2]}, ValueError),
    ((print, {"y": 1}), {"x": [1, 2]}, ValueError),
])
def test_bad_input_is_refused(args, kwargs, error):
    with pytest.raises(error):
        interactive.explore(*args, **kwargs)

"""Sliders where moving one beats re-running a cell, with a static figure wherever widgets cannot run.

``explore(draw, sparsity=[0.5, 0.75, 0.9], kind=["fine", "2:4"])`` first calls ``draw`` with the first
value of every control (or the value given in ``start``) and shows that figure (this is what nbval, the HTML
course and a plain console see), then, if ``ipywidgets`` is installed, shows one slider or dropdown per
control that redraws ``draw`` live in JupyterLab or Jupyter Notebook.
"""

from __future__ import annotations

from typing import Callable, Sequence


def _check(draw, controls, start):
    if not callable(draw):
        raise TypeError(f"draw must be a function of the controls, got {type(draw).__name__}")
    if not controls:
        raise ValueError("give at least one control, e.g. sparsity=[0.5, 0.9]")
    for name, values in controls.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
            raise ValueError(f"control {name!r} needs a non-empty list of values, got {values!r}")
    for name, value in start.items():
        if name not in controls or value not in list(controls[name]):
            raise ValueError(f"start value {name}={value!r} is not one of the control's values")


def explore(draw: Callable[..., None], start: dict | None = None, **controls: Sequence) -> object | None:
    """Draw once with the start values (static), then return sliders redrawing live (or None).

    Args:
        draw: called as ``draw(**{name: value})``; it draws one figure (and calls ``plt.show()``).
        start: ``{name: value}`` to start from; by default each control's first value.
        controls: ``name=[values…]``; numbers become a selection slider, anything else a dropdown.
    Returns:
        The ipywidgets ``interactive`` object (displayed by Jupyter as the cell's value), or None where
        ipywidgets is not installed.
    """
    start = dict(start or {})
    _check(draw, controls, start)
    first = {name: start.get(name, list(values)[0]) for name, values in controls.items()}
    draw(**first)
    try:
        import ipywidgets as widgets
    except ImportError:  # a bare environment: the static figure above is the whole output
        return None
    kwargs = {}
    for name, values in controls.items():
        options = list(values)
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in options):
            kwargs[name] = widgets.SelectionSlider(options=options, value=first[name], description=name,
                                                   continuous_update=False)
        else:
            kwargs[name] = widgets.Dropdown(options=options, value=first[name], description=name)
    return widgets.interactive(draw, **kwargs)

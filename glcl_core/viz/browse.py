"""Widgets for looking at volumes: a slice browser and a partition explorer (ipywidgets).

Each function builds its controls, draws the first frame at once and returns a ``VBox`` (controls on top, the
figure below). Frames are displayed as PNG images inside an ``Output`` widget, so they show whatever matplotlib
backend the kernel uses, and the first frame is kept in the notebook's saved widget state: the rendered book shows
it (with frozen controls) without a kernel.
"""
from __future__ import annotations

import base64
import io
from typing import Callable, Sequence

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure

from glcl_core.data.volume import Volume
from glcl_core.viz.volumes import plot_field_of_view, plot_partitions, plot_slice


def figure_png(fig: Figure, dpi: float | None = None) -> bytes:
    """The figure as PNG bytes (at ``dpi``, default the figure's own)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi or fig.dpi)
    return buffer.getvalue()


def show_in(output: widgets.Output, fig: Figure) -> None:
    """Replace what ``output`` shows with ``fig`` (as a PNG).

    The widget's ``outputs`` are set in one assignment rather than captured with ``with output:`` and
    ``clear_output(wait=True)``: a single state change, which front ends and notebook executors (nbclient) apply
    the same way, where output capture during a cell's execution can leave an executor waiting."""
    png = figure_png(fig)
    output.outputs = ({"output_type": "display_data", "metadata": {},
                       "data": {"image/png": base64.b64encode(png).decode("ascii"),
                                "text/plain": f"<Figure {fig.get_figwidth():g}x{fig.get_figheight():g} in>"}},)


def volume_dropdown(volumes: Sequence[Volume], value: int = 0) -> widgets.Dropdown:
    return widgets.Dropdown(options=[(f"{v.name} ({v.n_slices} slices)", i) for i, v in enumerate(volumes)],
                            value=int(value), description="volume", layout=widgets.Layout(width="260px"))


def _check(volumes: Sequence[Volume], volume: int) -> None:
    if not volumes:
        raise ValueError("no volumes to browse")
    if not 0 <= int(volume) < len(volumes):
        raise ValueError(f"volume index {volume} out of range for {len(volumes)} volumes")


def volume_browser(volumes: Sequence[Volume], frame: Callable[[Volume, int, bool], Figure], toggle: widgets.Checkbox,
                   volume: int = 0, z: int | None = None) -> widgets.VBox:
    """The controls every slice browser shares: a volume dropdown, a slice slider and one toggle over ``frame``.

    ``frame(volume, z, toggle.value) -> Figure`` draws one frame. Switching volume keeps the slider's relative
    position (a 40-slice and a 60-slice volume map slice 20 to slice 30).
    Returns ``VBox([HBox([dropdown, slider, toggle]), Output])``; the first frame is already drawn.
    """
    _check(volumes, volume)
    n_slices = volumes[int(volume)].n_slices
    chooser = volume_dropdown(volumes, volume)
    slider = widgets.IntSlider(value=n_slices // 2 if z is None else int(np.clip(z, 0, n_slices - 1)), min=0,
                               max=n_slices - 1, description="slice z", continuous_update=False,
                               layout=widgets.Layout(width="330px"))
    output = widgets.Output()
    busy = {"switching": False}  # one draw per volume switch, not one per slider change it causes

    def render(*_) -> None:
        if not busy["switching"]:
            show_in(output, frame(volumes[chooser.value], slider.value, toggle.value))

    def switch(change) -> None:
        old, new = volumes[change["old"]], volumes[change["new"]]
        relative = (slider.value + 0.5) / old.n_slices
        busy["switching"] = True
        try:  # set max and value together, then draw once
            slider.max = max(slider.value, new.n_slices - 1)
            slider.value = int(min(new.n_slices - 1, np.floor(relative * new.n_slices)))
            slider.max = new.n_slices - 1
        finally:
            busy["switching"] = False
        render()

    chooser.observe(switch, names="value")
    slider.observe(render, names="value")
    toggle.observe(render, names="value")
    render()
    return widgets.VBox([widgets.HBox([chooser, slider, toggle]), output])


def slice_browser(volumes: Sequence[Volume], n_partitions: int = 4, volume: int = 0, z: int | None = None,
                  show_label: bool = True, draw: Callable[..., Figure] = plot_slice) -> widgets.VBox:
    """Browse the slices of several volumes: a volume dropdown, a slice slider and a label-overlay toggle.

    Each frame (:func:`~glcl_core.viz.volumes.plot_slice`) shows the slice with its labels, framed in its
    partition's colour, next to a side view marking where the slice lies. Switching volume keeps the relative
    position of the slider.

    Args:
        volumes: the volumes (any in-plane sizes).
        n_partitions: S used to colour the partitions.
        volume, z: first frame (``z`` None: the middle slice).
        show_label: initial state of the overlay toggle.
        draw: frame function ``draw(volume, z, n_partitions=..., show_label=...) -> Figure`` (tests swap it).
    Returns:
        ``VBox([HBox(controls), Output])``; the first frame is already drawn.
    """
    overlay = widgets.Checkbox(value=bool(show_label), description="label overlay", indent=False)
    return volume_browser(volumes, lambda v, zz, shown: draw(v, zz, n_partitions=n_partitions, show_label=shown),
                          overlay, volume, z)


def partition_explorer(volumes: Sequence[Volume], n_partitions: int = 4, volume: int = 0,
                       max_partitions: int = 12) -> widgets.VBox:
    """Cut volumes into S partitions: an S slider, a volume dropdown and a view toggle.

    Views: "one volume" (:func:`~glcl_core.viz.volumes.plot_partitions`: bands on the side view and positions
    against slice index) and "all volumes" (:func:`~glcl_core.viz.volumes.plot_field_of_view`: every volume's
    partitions in scanner millimetres).

    Returns:
        ``VBox([HBox(controls), Output])``; the first frame is already drawn.
    """
    _check(volumes, volume)
    largest = max(1, min(int(max_partitions), min(v.n_slices for v in volumes)))
    chooser = volume_dropdown(volumes, volume)
    count = widgets.IntSlider(value=int(np.clip(n_partitions, 1, largest)), min=1, max=largest,
                              description="S", continuous_update=False, layout=widgets.Layout(width="300px"))
    view = widgets.ToggleButtons(options=["one volume", "all volumes"], value="one volume",
                                 style={"button_width": "100px"})
    output = widgets.Output()

    def render(*_) -> None:
        chooser.disabled = view.value == "all volumes"
        if view.value == "one volume":
            fig = plot_partitions(volumes[chooser.value], count.value)
        else:
            fig = plot_field_of_view(list(volumes), count.value)
        show_in(output, fig)

    for control in (chooser, count, view):
        control.observe(render, names="value")
    render()
    return widgets.VBox([widgets.HBox([view, chooser, count]), output])

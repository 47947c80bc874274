"""The page: inputs and actions on the left, Slicer's slice views, legend, shares table/bar chart on the right.

Stable element ids for automation: ``load-phantom``, ``load-case``, ``case-dir``, ``seq-<KEY>``, ``model``,
``device``, ``segment``, ``explain``, ``region``, ``class``, ``preset``, ``method``, ``place-point``, ``draw-segment``,
``sequence-relevance``, ``cancel``, ``progress`` (``data-value``: percent), ``log``, ``error`` (the banner),
``status`` (``data-actions``: buttons handled, ``data-finished``: jobs
finished), ``info``, ``warning`` (relevance and necessity disagree), ``show-sequence``, ``legend``, ``shares``
(one row per sequence, ``data-share`` on its row; cells ``dice-without`` and ``shapley-dice``), ``downloads``.
"""
from __future__ import annotations

from trame.ui.vuetify3 import VAppLayout
from trame.widgets import client, html
from trame.widgets import vuetify3 as v3

from ..sequences import DISPLAY_NAMES, SEQUENCE_KEYS

CSS = """
html { overflow-y: auto; }
#shares { border-collapse: collapse; font-size: 13px; }
#shares td, #shares th { padding: 2px 6px; border-bottom: 1px solid #444; }
#shares .bar { height: 12px; display: inline-block; vertical-align: middle; }
#log { font-size: 11px; max-height: 140px; overflow-y: auto; white-space: pre-wrap; background: #111;
       padding: 4px; margin: 0; }
.lrp-section { font-weight: 600; margin: 10px 0 4px 0; }
"""


def _btn(label, id, click, disabled="busy || !case_loaded", color="primary", **kw):
    return v3.VBtn(label, id=id, click=click, disabled=(disabled,), color=color, size="small", classes="ma-1", **kw)


def build_page(app) -> VAppLayout:
    """The page of a :class:`~LiverTumorLRPLib.web.app.WebApp` (its handlers are ``app``'s methods)."""
    with VAppLayout(app.server, full_height=True, theme="dark") as layout:
        client.Style(CSS)
        with v3.VNavigationDrawer(permanent=True, width=380):
            with html.Div(classes="pa-2"):
                html.Div("LiverTumorLRP", classes="text-h6")
                _inputs_panel(app)
                _run_panel(app)
        with v3.VMain():
            with html.Div(classes="pa-2"):
                v3.VAlert("{{ error }}", id="error", v_show=("error",), type="error", density="compact",
                          closable=False, classes="mb-2")
                v3.VAlert("{{ warning }}", id="warning", v_show=("warning",), type="warning", density="compact",
                          closable=False, classes="mb-2")
                html.Div("{{ info }}", id="info", classes="text-body-2 mb-1")
                with html.Div(style="height: 420px; position: relative;"):
                    app.layout_manager.initialize_layout_grid(layout)
                with html.Div(classes="d-flex flex-wrap mt-2", v_show=("shares.length",)):
                    _display_panel()
                    _shares_table()
    app.state.setdefault("share_max", 1.0)
    return layout


def _inputs_panel(app) -> None:
    """Case, the six sequence assignments, model and device."""
    html.Div("Case", classes="lrp-section")
    v3.VTextField(v_model=("case_dir",), id="case-dir", label="case folder on the server",
                  density="compact", hide_details=True)
    _btn("Load case", "load-case", app.load_case, disabled="busy")
    _btn("Load phantom", "load-phantom", app.load_phantom, disabled="busy")
    html.Div("{{ case_name }}", id="case-name", classes="text-caption")
    html.Div("Sequences", classes="lrp-section")
    for key, name in zip(SEQUENCE_KEYS, DISPLAY_NAMES):
        v3.VSelect(v_model=(f"seq_{key}",), items=("volumes",), id=f"seq-{key}", label=name,
                   density="compact", hide_details=True, disabled=("busy",))
    html.Div("Model", classes="lrp-section")
    v3.VTextField(v_model=("model",), id="model", label="model (.safetensors) or 'bundled'",
                  density="compact", hide_details=True)
    v3.VSelect(v_model=("device",), items=("devices",), id="device", label="device",
               density="compact", hide_details=True)


def _run_panel(app) -> None:
    """The jobs (segment, sequence relevance, explain a region), cancel, progress and log."""
    html.Div("Run", classes="lrp-section")
    _btn("Segment", "segment", app.segment)
    _btn("Sequence relevance", "sequence-relevance", app.sequence_relevance)
    v3.VSelect(v_model=("method",), items=("methods",), id="method", label="sequence relevance method",
               density="compact", hide_details=True)
    with html.Div(classes="d-flex"):
        v3.VSelect(v_model=("region",), items=("regions",), id="region", label="region",
                   density="compact", hide_details=True)
        v3.VSelect(v_model=("cls",), items=("classes",), id="class", label="class",
                   density="compact", hide_details=True, style="max-width: 120px")
    v3.VSelect(v_model=("preset",), items=("presets",), id="preset", label="LRP preset",
               density="compact", hide_details=True)
    _btn("Place point", "place-point", app.place_point, color="secondary")
    _btn("{{ drawing ? 'Stop drawing' : 'Draw segment' }}", "draw-segment", app.toggle_drawing,
         color="secondary")
    html.Div("{{ point }}", id="point", classes="text-caption")
    _btn("Explain", "explain", app.explain)
    _btn("Cancel", "cancel", app.cancel, disabled="!busy", color="error")
    v3.VProgressLinear(model_value=("progress",), id="progress", height=14, color="green",
                       __properties=[("data_value", "data-value")], data_value=("progress",),
                       classes="my-1")
    html.Div("{{ busy ? job_name + ' running' : '' }}", id="status", classes="text-caption",
             __properties=[("data_finished", "data-finished"), ("data_actions", "data-actions")],
             data_finished=("jobs_finished",), data_actions=("actions",))
    html.Pre("{{ log }}", id="log")


def _display_panel() -> None:
    """Which sequence the views show, the colour legend of the overlay, the downloads."""
    with html.Div(classes="mr-4", style="width: 240px"):
        v3.VSelect(v_model=("show_seq",), items=("sequence_items",), id="show-sequence",
                   label="sequence shown", density="compact", hide_details=True)
        html.Div("{{ shown }}", id="shown", classes="text-caption")
        with html.Div(id="legend", classes="mt-2"):
            html.Div("relevance (overlay colours)", classes="text-caption")
            html.Div(style=("`height: 14px; width: 220px; background: ${legend.gradient}`",))
            with html.Div(classes="d-flex text-caption", style="width: 220px"):
                html.Span("{{ legend.min.toPrecision(2) }}")
                v3.VSpacer()
                html.Span("0")
                v3.VSpacer()
                html.Span("{{ legend.max.toPrecision(2) }}")
        with html.Div(id="downloads", classes="mt-2"):
            html.Div("Download", classes="text-caption")
            with html.Div(v_for="d in downloads", key="d.url"):
                html.A("{{ d.name }}", href=("d.url",), download=("d.name",),
                       classes="text-caption", style="color: #8cf")


def _shares_table() -> None:
    """One row per sequence: name, bar, share, positive and negative mass."""
    with html.Div():
        html.Div("{{ result_name }}", classes="text-body-2")
        with html.Table(id="shares"):
            with html.Tr():
                for head in ("sequence", "", "share", "positive", "negative"):
                    html.Th(head)
                html.Th("Dice without it", v_show=("necessity",))
                html.Th("Shapley value of Dice", v_show=("necessity",))
            with html.Tr(v_for="row in shares", key="row.key", classes="share-row",
                         __properties=[("data_share", "data-share"), ("data_key", "data-key")],
                         data_share=("row.share",), data_key=("row.key",)):
                html.Td("{{ row.name }}")
                with html.Td(style="width: 220px"):
                    html.Span(classes="bar", style=(
                        "`width: ${Math.round(200 * Math.abs(row.share) / share_max)}px;"
                        " background: ${row.share >= 0 ? row.color : '#3b4cc0'}`",))
                html.Td("{{ row.share.toFixed(4) }}", classes="share-value")
                html.Td("{{ row.positive.toFixed(4) }}")
                html.Td("{{ row.negative.toFixed(4) }}")
                html.Td("{{ necessity ? row.dice_without.toFixed(3) : '' }}", v_show=("necessity",),
                        classes="dice-without")
                html.Td("{{ necessity ? row.shapley_dice.toFixed(3) : '' }}", v_show=("necessity",),
                        classes="shapley-dice")

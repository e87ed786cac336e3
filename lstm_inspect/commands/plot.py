"""`plot`: pictures of each recurrent direction's gates, written as PNG files with an index.

Two halves, so the guard keeps working and matplotlib never runs near the model's bytes:

* `collect()` runs in the guarded child (NumPy only): it reads the blocks, streamed (`blockmath`),
  and returns small plain data per direction: block-averaged matrices for the heat maps, histogram
  counts, singular values.
* `write()` runs in the parent: it draws with matplotlib's Agg canvas (no pyplot, no display, no
  user matplotlibrc: matplotlib's own default style) and writes the PNGs and `index.md` into a
  folder that appears whole (`writers.atomic.atomic_folder`).

Pictures per direction (`<name>` is the direction path with `/` as `--`):
  `<name>.heatmap.png`   W and U of each gate (rows W, U; one column per gate), one symmetric colour
                         scale shared by every panel (±max |value| shown); matrices larger than
                         HEATMAP_MAX_SIDE are shown as means of factor×factor blocks, the factor in
                         the panel title; ConvLSTM kernels as (k…·in, out) matrices.
  `<name>.hist.png`      per gate, the values of W and U (top) and of b and bU (bottom), in bins
                         shared by every gate of the direction.
  `<name>.spectrum.png`  the singular values of each U block and of the whole recurrent kernel U,
                         largest first (exact; skipped for a matrix whose smaller side exceeds
                         `blockmath.SPECTRUM_MAX_SIDE`).
Deterministic: fixed figure sizes and DPI, matplotlib's default style, PNG metadata without the
"Software" entry; the same input and matplotlib version give the same bytes.
"""
from __future__ import annotations

import importlib.util
import os
import re
from typing import Any, Sequence

import numpy as np

from lstm_inspect.cells import GATE_MEANING, Direction, directions, select
from lstm_inspect.commands import blockmath
from lstm_inspect.commands.blockmath import MatrixView
from lstm_inspect.errors import MissingExtraError, UsageError

KINDS = ("heatmap", "hist", "spectrum")
MISSING_MATPLOTLIB = "plot needs matplotlib: pip install 'lstm-inspect[plot]'"
HEATMAP_MAX_SIDE = 128  # matrix cells per side of a heat map panel; larger matrices are block-averaged
HIST_BINS = 64
DPI = 100
PANEL_INCHES = (2.6, 2.4)  # width, height of one heat map or histogram panel


def require_matplotlib() -> None:
    if importlib.util.find_spec("matplotlib") is None:
        raise MissingExtraError(MISSING_MATPLOTLIB)


# ================================================================================================
# Child side: the numbers to draw (no matplotlib here)

def collect(path: str, patterns: Sequence[str] = (), kinds: Sequence[str] = KINDS) -> dict[str, Any]:
    from lstm_inspect.formats import open_model
    with open_model(path) as model:
        dirs = select(directions(model), patterns)
        if not dirs:
            raise UsageError("the model has no recurrent layers to plot")
        return {"file": model.file, "name": os.path.basename(os.path.normpath(str(path))),
                "directions": [direction_pictures(d, kinds) for d in dirs]}


def gate_blocks(d: Direction, kind: str) -> list:
    """The W or U (or b, bU) blocks of each gate in canonical order (SimpleRNN: the single one)."""
    if not d.gates:
        return [d.block(kind)] if d.has_block(kind) else []
    return [d.block(f"{kind}_{g}") for g in d.gates if d.has_block(f"{kind}_{g}")]


def direction_pictures(d: Direction, kinds: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"path": d.path, "kind": d.kind.value, "units": d.units, "input_dim": d.input_dim,
                           "gates": list(d.gates) or [""]}
    if "heatmap" in kinds:
        out["heatmap"] = heatmap_data(d)
    if "hist" in kinds:
        out["hist"] = hist_data(d)
    if "spectrum" in kinds:
        out["spectrum"] = spectrum_data(d)
    return out


def heatmap_data(d: Direction) -> dict[str, Any]:
    panels = {}
    for b in gate_blocks(d, "W") + gate_blocks(d, "U"):
        view = MatrixView((b,))
        image, factor = blockmath.block_average(view, HEATMAP_MAX_SIDE)
        panels[b.name] = {"image": image.astype(np.float32), "factor": factor, "shape": list(view.shape)}
    finite = [np.nanmax(np.abs(p["image"])) for p in panels.values() if np.isfinite(p["image"]).any()]
    return {"panels": panels, "limit": float(max(finite)) if finite else 1.0}


def hist_data(d: Direction) -> dict[str, Any]:
    groups = {"weights": ("W", "U"), "biases": ("b", "bU")}
    out: dict[str, Any] = {}
    for group, kinds in groups.items():
        blocks = {k: gate_blocks(d, k) for k in kinds}
        every = [b for bs in blocks.values() for b in bs]
        if not every:
            continue
        moments = {b.name: blockmath.block_moments(b) for b in every}
        edges = _bin_edges([m for m in moments.values()])
        counts = {b.name: blockmath.histogram([b], edges) for b in every}
        out[group] = {"edges": edges, "counts": counts,
                      "nonfinite": sum(m.nan + m.inf for m in moments.values())}
    return out


def _bin_edges(moments: list) -> np.ndarray:
    lows = [m.min for m in moments if m.min is not None]
    highs = [m.max for m in moments if m.max is not None]
    low, high = (min(lows), max(highs)) if lows else (-1.0, 1.0)
    if low == high:
        low, high = low - 0.5, high + 0.5
    return np.linspace(low, high, HIST_BINS + 1)


def spectrum_data(d: Direction) -> dict[str, Any]:
    blocks = gate_blocks(d, "U")
    views = {b.name: MatrixView((b,)) for b in blocks} if d.gates else {}
    if blocks:
        views["U"] = MatrixView(tuple(blocks))
    shapes = {name: list(view.shape) for name, view in views.items()}
    gates = [views[b.name] for b in blocks if b.name in views]
    if len(gates) > 1 and all(_row_gram_spectrum(v) for v in gates):
        return {"values": _spectra_from_row_grams(views), "shapes": shapes}
    values = {name: blockmath.singular_values(view) for name, view in views.items()}
    return {"values": values, "shapes": shapes}


def _row_gram_spectrum(view: MatrixView) -> bool:
    """Whether singular_values takes this matrix's spectrum from its row Gram matrix."""
    return view.size > blockmath.EXACT_MAX_ELEMENTS and view.rows <= view.cols and \
        view.rows <= blockmath.SPECTRUM_MAX_SIDE


def _spectra_from_row_grams(views: dict[str, MatrixView]) -> dict[str, np.ndarray | None]:
    """Large gates side by side: U Uᵀ = Σ_g U_g U_gᵀ, one pass over U for every spectrum."""
    out: dict[str, np.ndarray | None] = {}
    total = None
    for name, view in views.items():
        if name == "U":
            continue
        g = blockmath.gram(view, rows=True)
        out[name] = blockmath.singular_values_from_gram(g)
        if total is None:
            total = g
        else:
            total += g
        del g
    out["U"] = blockmath.singular_values_from_gram(total)
    return out


# ================================================================================================
# Parent side: draw and write

def file_stem(path: str) -> str:
    """A file name for a direction path: '/' becomes '--', anything unusual '_'."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", path.replace("/", "--")).strip(".") or "_"
    return stem[:100]


def write(data: dict[str, Any], output: str | os.PathLike, force: bool) -> list[str]:
    """Draw every picture into a fresh folder and rename it to `output`; returns the file names."""
    from lstm_inspect.commands.split import unique_keys
    from lstm_inspect.writers.atomic import atomic_folder
    stems = unique_keys([file_stem(d["path"]) for d in data["directions"]])
    lines: list[str] = []
    written: list[str] = []
    with atomic_folder(output, force, suffixes=(".png", ".md"), what="earlier plot pictures (.png, .md)") as tmp:
        with _default_style():
            for d, stem in zip(data["directions"], stems):
                for kind, draw, caption in _PICTURES:
                    if kind not in d:
                        continue
                    fig = draw(d)
                    if fig is None:
                        continue
                    name = f"{stem}.{kind}.png"
                    width, height = save_png(fig, os.path.join(tmp, name))
                    written.append(name)
                    lines.append(f"- [{_md(d['path'])} — {caption(d)}]({name}) ({width}×{height} px)")
        with open(os.path.join(tmp, "index.md"), "w", encoding="utf-8", newline="\n") as fh:
            fh.write(f"# lstm-inspect plot: `{_md(data['name'])}`\n\n" + "\n".join(lines) + "\n")
    return written


def _md(text: str) -> str:
    return re.sub(r"[\x00-\x1f\x7f`\[\]|]", "_", str(text))


class _default_style:
    """matplotlib's default rcParams, whatever the user's matplotlibrc says (for stable bytes)."""

    def __enter__(self) -> None:
        try:
            import matplotlib
        except ImportError as exc:  # present but broken (find_spec found it)
            raise MissingExtraError(f"{MISSING_MATPLOTLIB} ({exc})") from None
        self._context = matplotlib.rc_context()
        self._context.__enter__()
        matplotlib.rcdefaults()
        matplotlib.rcParams["svg.hashsalt"] = "lstm-inspect"

    def __exit__(self, *exc: object) -> None:
        self._context.__exit__(*exc)


def figure(width: float, height: float):
    """A figure on an Agg canvas (no pyplot, no GUI backend), `width`×`height` inches at DPI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: str) -> tuple[int, int]:
    """Write the PNG (no 'Software' metadata: the bytes depend only on the picture); returns its size."""
    fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    width, height = fig.get_size_inches() * DPI
    return int(round(width)), int(round(height))


def text(value: str) -> str:
    """A name from the file as inert matplotlib text: printable, and '$' escaped (no mathtext)."""
    from lstm_inspect.safety.text import printable
    return printable(str(value), 200).replace("$", r"\$")


def _gate_title(name: str) -> str:
    gate = name.partition("_")[2]
    return f"{name} ({GATE_MEANING[gate]})" if gate in GATE_MEANING else name


def _shape_text(shape: Sequence[int]) -> str:
    return "×".join(str(n) for n in shape)


def draw_heatmap(d: dict[str, Any]):
    import matplotlib
    data = d["heatmap"]
    panels = data["panels"]
    if not panels:
        return None
    gates = d["gates"]
    rows = [k for k in ("W", "U") if any(n.partition("_")[0] == k for n in panels)]
    fig = figure(PANEL_INCHES[0] * len(gates) + 1.0, PANEL_INCHES[1] * len(rows) + 0.6)
    axes = fig.subplots(len(rows), len(gates), squeeze=False)
    limit = data["limit"] or 1.0
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.6")
    image = None
    for r, kind in enumerate(rows):
        for c, gate in enumerate(gates):
            ax = axes[r][c]
            name = f"{kind}_{gate}" if gate else kind
            panel = panels.get(name)
            if panel is None:
                ax.set_axis_off()
                continue
            image = ax.imshow(panel["image"], cmap=cmap, vmin=-limit, vmax=limit, interpolation="nearest",
                              aspect="auto")
            shrink = f", mean of {panel['factor']}×{panel['factor']} blocks" if panel["factor"] > 1 else ""
            ax.set_title(f"{_gate_title(name)}\n{_shape_text(panel['shape'])}{shrink}", fontsize=8)
            ax.tick_params(labelsize=6)
            if c == 0:
                ax.set_ylabel("input feature (row)" if kind == "W" else "state unit (row)", fontsize=7)
            if r == len(rows) - 1:
                ax.set_xlabel("unit (column)", fontsize=7)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8).ax.tick_params(labelsize=7)
    fig.suptitle(f"{text(d['path'])} — {d['kind']}: W and U per gate (shared scale ±{limit:.3g})", fontsize=10)
    return fig


def draw_hist(d: dict[str, Any]):
    data = d["hist"]
    groups = [g for g in ("weights", "biases") if g in data]
    if not groups:
        return None
    gates = d["gates"]
    fig = figure(PANEL_INCHES[0] * len(gates) + 0.4, PANEL_INCHES[1] * len(groups) + 0.6)
    axes = fig.subplots(len(groups), len(gates), squeeze=False)
    colours = {"W": "tab:blue", "U": "tab:orange", "b": "tab:green", "bU": "tab:red"}
    for r, group in enumerate(groups):
        edges, counts = data[group]["edges"], data[group]["counts"]
        for c, gate in enumerate(gates):
            ax = axes[r][c]
            drawn = False
            for kind in ("W", "U") if group == "weights" else ("b", "bU"):
                name = f"{kind}_{gate}" if gate else kind
                if name in counts:
                    ax.stairs(counts[name], edges, label=kind, color=colours[kind])
                    drawn = True
            if not drawn:
                ax.set_axis_off()
                continue
            title = f"{gate} ({GATE_MEANING[gate]})" if gate else "the cell"
            ax.set_title(f"{title}: {group}", fontsize=8)
            ax.tick_params(labelsize=6)
            if c == 0:
                ax.set_ylabel("count", fontsize=7)
            if r == len(groups) - 1:
                ax.set_xlabel("value", fontsize=7)
            ax.legend(fontsize=6)
    fig.suptitle(f"{text(d['path'])} — {d['kind']}: values per gate ({HIST_BINS} bins shared by the gates)",
                 fontsize=10)
    return fig


def draw_spectrum(d: dict[str, Any]):
    data = d["spectrum"]
    values = data["values"]
    if not values:
        return None
    fig = figure(6.4, 4.0)
    ax = fig.subplots()
    skipped = []
    for name, sv in values.items():
        if sv is None:
            skipped.append(name)
            continue
        label = "U (whole kernel)" if name == "U" and len(values) > 1 else _gate_title(name)
        ax.plot(np.arange(1, len(sv) + 1), sv, label=f"{label}, σ₁ = {sv[0]:.4g}" if len(sv) else label,
                linewidth=1.2 if name == "U" else 0.9, color="black" if name == "U" else None)
    ax.set_xlabel("index (largest first)", fontsize=8)
    ax.set_ylabel("singular value", fontsize=8)
    ax.tick_params(labelsize=7)
    if any(v is not None for v in values.values()):
        ax.legend(fontsize=7)
    note = f" (not drawn: {', '.join(skipped)})" if skipped else ""
    ax.set_title(f"{text(d['path'])} — singular values of U{note}", fontsize=10)
    return fig


_PICTURES = (
    ("heatmap", draw_heatmap, lambda d: "heat maps of W and U per gate"),
    ("hist", draw_hist, lambda d: "histograms of weights and biases per gate"),
    ("spectrum", draw_spectrum, lambda d: "singular values of U"),
)

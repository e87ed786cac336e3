"""`plot`: the expected PNG files and index, the stated sizes, the same bytes run after run, atomic
output, the optional extra; and the plotted numbers equal NumPy on the split blocks."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lstm_inspect.cli import app
from lstm_inspect.commands import plot as plot_mod
from lstm_inspect.commands.split import split_gates

from . import stats_oracle as oracle
from .conftest import ROOT, SAMPLES
from .test_stats import write_lstm

runner = CliRunner()
INDEX_LINE = re.compile(r"^- \[(?P<path>.+) — (?P<what>.+)\]\((?P<file>[^)]+)\) \((?P<w>\d+)×(?P<h>\d+) px\)$")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def index_entries(folder: Path) -> list[dict]:
    lines = (folder / "index.md").read_text().splitlines()
    assert lines[0].startswith("# lstm-inspect plot: ") and lines[1] == ""
    entries = [INDEX_LINE.match(line) for line in lines[2:]]
    assert all(entries), lines
    return [m.groupdict() for m in entries]


def check_folder(folder: Path, paths: list[str], kinds=plot_mod.KINDS) -> None:
    """One PNG per direction and kind, each listed once in index.md with the size it has."""
    entries = index_entries(folder)
    expected = {f"{plot_mod.file_stem(p)}.{k}.png" for p in paths for k in kinds}
    assert {e["file"] for e in entries} == expected
    assert {p.name for p in folder.iterdir()} == expected | {"index.md"}
    for e in entries:
        data = (folder / e["file"]).read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        with Image.open(folder / e["file"]) as image:
            image.verify()
        with Image.open(folder / e["file"]) as image:
            assert image.format == "PNG" and image.size == (int(e["w"]), int(e["h"])), e
            assert "Software" not in image.info  # no version text: bytes depend on the picture only


ZOO_MODELS = ("lstm_seq", "gru_reset_after", "gru_no_reset_after", "simple_rnn", "convlstm2d", "convlstm3d",
              "bidi_lstm", "rnn_stacked", "nested")


def test_plot_writes_every_picture_for_every_kind(zoo_keras3, zoo_tf_keras, tmp_path):
    entries = [e for e in zoo_keras3 if e["dialect"] == "keras-zip" and e["model"] in ZOO_MODELS]
    entries += [e for e in zoo_tf_keras if e["dialect"] == "hdf5-legacy" and e["model"].startswith("cudnn")]
    assert len(entries) == len(ZOO_MODELS) + 3
    for k, entry in enumerate(entries):
        out = tmp_path / f"out{k}"
        result = run("plot", entry["_abs"], "-o", out)
        assert result.exit_code == 0, result.output
        check_folder(out, [r["path"] for r in entry["recurrent"]])


def test_same_bytes_run_after_run(tmp_path):
    model = SAMPLES / "bidi_stack.h5"
    first, second = tmp_path / "a", tmp_path / "b"
    assert run("plot", model, "-o", first).exit_code == 0
    assert run("plot", model, "-o", second).exit_code == 0
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir()) and len(names) == 13
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    # A separate process (fresh matplotlib state, font cache) writes the same bytes too.
    third = tmp_path / "c"
    proc = subprocess.run([sys.executable, "-m", "lstm_inspect", "plot", str(model), "-o", str(third)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for name in names:
        assert (first / name).read_bytes() == (third / name).read_bytes(), name


def test_kind_selects_the_pictures(tmp_path):
    model = SAMPLES / "gru_forecaster.keras"
    for kind in ("heatmap", "hist", "spectrum"):
        out = tmp_path / kind
        assert run("plot", model, "-o", out, "--kind", kind).exit_code == 0
        check_folder(out, ["gru"], (kind,))
    out = tmp_path / "layer"
    assert run("plot", SAMPLES / "bidi_stack.h5", "-o", out, "--layer", "bigru/forward").exit_code == 0
    check_folder(out, ["bigru/forward"])


def test_output_is_atomic_and_replaced_only_with_force(tmp_path):
    model = SAMPLES / "lstm_classifier.h5"
    out = tmp_path / "pictures"
    assert run("plot", model, "-o", out).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = run("plot", model, "-o", out)
    assert again.exit_code == 2 and "--force" in again.stderr
    assert run("plot", model, "-o", out, "--force", "--kind", "spectrum").exit_code == 0
    check_folder(out, ["lstm"], ("spectrum",))  # the earlier pictures were replaced, not merged
    assert (out / "lstm.spectrum.png").read_bytes() == before["lstm.spectrum.png"]
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    refused = run("plot", model, "-o", precious, "--force")
    assert refused.exit_code == 2 and "not earlier plot pictures" in refused.stderr
    assert (precious / "notes.txt").read_text() == "keep me"
    bad = tmp_path / "bad.h5"
    bad.write_bytes(model.read_bytes()[:2000])
    failed = run("plot", bad, "-o", tmp_path / "never")
    assert failed.exit_code == 2 and not (tmp_path / "never").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    nothing = run("plot", model, "-o", tmp_path / "none", "--layer", "nope")
    assert nothing.exit_code == 2 and "no recurrent layer matches" in nothing.stderr


def test_without_matplotlib_plot_exits_2_naming_the_extra(tmp_path):
    script = (
        "import sys\n"
        "sys.modules['matplotlib'] = None  # as if it were not installed\n"
        f"sys.argv = ['lstm-inspect', 'plot', {str(SAMPLES / 'lstm_classifier.h5')!r}, '-o', {str(tmp_path / 'o')!r}]\n"
        "import runpy\n"
        "runpy.run_module('lstm_inspect', run_name='__main__')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "lstm-inspect: plot needs matplotlib: pip install 'lstm-inspect[plot]'"
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------
# The plotted numbers

def block_means(matrix: np.ndarray, factor: int) -> np.ndarray:
    rows, cols = -(-matrix.shape[0] // factor), -(-matrix.shape[1] // factor)
    padded = np.full((rows * factor, cols * factor), np.nan)
    padded[:matrix.shape[0], :matrix.shape[1]] = matrix
    return np.nanmean(padded.reshape(rows, factor, cols, factor), axis=(1, 3))


def test_plotted_numbers_equal_numpy_on_the_split_blocks(tmp_path):
    units, input_dim = 300, 5  # 300 > HEATMAP_MAX_SIDE: block means of 3×3
    rng = np.random.default_rng(4)
    kernel = rng.uniform(-0.2, 0.2, (input_dim, 4 * units)).astype(np.float32)
    recurrent = rng.standard_normal((units, 4 * units)).astype(np.float32)
    bias = rng.uniform(-1, 1, 4 * units).astype(np.float32)
    recurrent[7, units + 9] = np.nan  # in U_f: its pixel block averages the other 8 values
    path = tmp_path / "m.h5"
    write_lstm(path, kernel, recurrent, bias)
    data = plot_mod.collect(str(path))
    split_gates(path, tmp_path / "s.npz", force=True)
    blocks = oracle.load_split(tmp_path / "s.npz")[1]["lstm"]
    d = data["directions"][0]
    factor = -(-units // plot_mod.HEATMAP_MAX_SIDE)
    for name, panel in d["heatmap"]["panels"].items():
        assert panel["factor"] == factor and panel["shape"] == list(blocks[name].shape)
        want = block_means(blocks[name], factor)
        np.testing.assert_allclose(panel["image"], want.astype(np.float32), rtol=1e-6, atol=1e-7)
    assert d["heatmap"]["limit"] == pytest.approx(max(np.nanmax(np.abs(block_means(blocks[n], factor)))
                                                      for n in d["heatmap"]["panels"]), rel=1e-6)
    weights = [blocks[f"{k}_{g}"] for k in "WU" for g in "ifco"]
    finite = np.concatenate([w[np.isfinite(w)] for w in weights])
    edges = np.linspace(finite.min(), finite.max(), plot_mod.HIST_BINS + 1)
    hist = d["hist"]["weights"]
    np.testing.assert_array_equal(hist["edges"], edges)
    for g in "ifco":
        for k in "WU":
            values = blocks[f"{k}_{g}"]
            np.testing.assert_array_equal(hist["counts"][f"{k}_{g}"],
                                          np.histogram(values[np.isfinite(values)], bins=edges)[0])
    assert hist["nonfinite"] == 1
    spectra = d["spectrum"]["values"]
    assert spectra["U_i"] is not None and spectra["U_f"] is None and spectra["U"] is None  # NaN in U_f
    for g in "co":
        np.testing.assert_allclose(spectra[f"U_{g}"], np.linalg.svd(blocks[f"U_{g}"], compute_uv=False),
                                   rtol=1e-9, atol=1e-9)
    out = tmp_path / "pictures"
    assert run("plot", path, "-o", out).exit_code == 0
    check_folder(out, ["lstm"])


def test_large_spectra_come_from_the_gram_matrix(monkeypatch):
    """Above EXACT_MAX_ELEMENTS the spectrum is √eig(Gram): equal to the SVD to ~1e-8 of σ₁."""
    from lstm_inspect.cells import Block
    from lstm_inspect.commands import blockmath, lockfile

    from .test_stats import memory_weight
    monkeypatch.setattr(lockfile, "CHUNK_BYTES", 2048)
    monkeypatch.setattr(blockmath, "EXACT_MAX_ELEMENTS", 0)
    rng = np.random.default_rng(6)
    for shape in ((60, 60), (30, 200), (200, 30)):
        values = rng.standard_normal(shape).astype(np.float32)
        view = blockmath.MatrixView((Block("U_i", shape, memory_weight("u", values)),))
        got = blockmath.singular_values(view)
        want = np.linalg.svd(values.astype(np.float64), compute_uv=False)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-7 * want[0])
    big = blockmath.MatrixView((Block("U_i", (9, 9), memory_weight("u", np.ones((9, 9), np.float32))),))
    assert blockmath.singular_values(big, max_side=8) is None  # larger than the stated limit: not drawn


def test_spectra_from_the_sum_of_the_gates_row_grams(monkeypatch):
    from lstm_inspect.cells import Block
    from lstm_inspect.commands import blockmath, lockfile

    from .test_stats import memory_weight
    monkeypatch.setattr(lockfile, "CHUNK_BYTES", 2048)
    monkeypatch.setattr(blockmath, "EXACT_MAX_ELEMENTS", 0)
    rng = np.random.default_rng(12)
    rows, units = 20, 25
    fused = rng.standard_normal((rows, 4 * units)).astype(np.float32)
    weight = memory_weight("recurrent", fused)
    blocks = [Block(f"U_{g}", (rows, units), weight, (slice(None), slice(k * units, (k + 1) * units)))
              for k, g in enumerate("ifco")]
    views = {b.name: blockmath.MatrixView((b,)) for b in blocks}
    views["U"] = blockmath.MatrixView(tuple(blocks))
    assert all(plot_mod._row_gram_spectrum(v) for v in views.values())
    got = plot_mod._spectra_from_row_grams(views)
    for k, g in enumerate("ifco"):
        want = np.linalg.svd(fused[:, k * units:(k + 1) * units].astype(np.float64), compute_uv=False)
        np.testing.assert_allclose(got[f"U_{g}"], want, rtol=0, atol=1e-7 * want[0])
    want = np.linalg.svd(fused.astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(got["U"], want, rtol=0, atol=1e-7 * want[0])


def test_hostile_names_are_drawn_inert(tmp_path):
    """A layer name with mathtext, control characters and path separators: pictures are written
    under a safe file name and the title shows the name as text (no mathtext parse, no escape)."""
    kernel = np.full((2, 12), 0.1, np.float32)
    recurrent = np.full((3, 12), -0.1, np.float32)
    bias = np.zeros(12, np.float32)
    name = "x$\\frac{$^\x1b[31m/../..\nevil"
    path = tmp_path / "evil.h5"
    write_lstm(path, kernel, recurrent, bias, name=name)
    out = tmp_path / "pictures"
    result = run("plot", path, "-o", out)
    assert result.exit_code == 0, result.output
    import json
    direction = json.loads(run("summary", "-f", "json", path).stdout)["recurrent"][0]["path"]
    assert "$" in direction and "\x1b" in direction
    files = sorted(p.name for p in out.iterdir())
    assert set(files) == {f"{plot_mod.file_stem(direction)}.{k}.png" for k in plot_mod.KINDS} | {"index.md"}
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", f) and not f.startswith(".") for f in files)
    assert "\x1b" not in (out / "index.md").read_text() and "\n" not in plot_mod.text(direction)
    assert "$" not in plot_mod.text(direction).replace("\\$", "")  # every '$' escaped: no mathtext
    stats = run("stats", path)
    assert stats.exit_code == 0 and "\x1b[31m" not in stats.stdout

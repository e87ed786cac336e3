"""Damaged `.tflite` files through the real CLI (guarded child, exit codes, one line on stderr): a small
hand-built model cut at every offset, and real and hand-built files with random bytes replaced. Every case
runs `summary`; a sample runs `split-gates` too, which must leave nothing behind when it fails."""
from __future__ import annotations

from pathlib import Path

from tests.hostile._harness import check_records, run_batch

from .conftest import CORPUS
from .runnable import fancy_lstm
from .test_synthetic import one_step_lstm


def small_file(spg, folder: Path) -> Path:
    import numpy as np
    path = folder / "small.tflite"
    path.write_bytes(one_step_lstm(spg, np.random.default_rng(11), units=2, inputs=3).bytes())
    return path


def test_truncated_at_every_offset(spg, tmp_path):
    """Every prefix of a complete model is refused: exit 2, one line (split-gates on every 20th)."""
    seed = small_file(spg, tmp_path)
    size = seed.stat().st_size
    assert size < 4096
    jobs = [{"id": f"cut-{n}", "seed": str(seed), "op": "truncate", "param": n, "split": n % 20 == 0,
             "allowed": [2]} for n in range(size)]
    records = run_batch(jobs, tmp_path / "work")
    check_records(records, expected=size, what="truncated .tflite")


def test_random_bytes_replaced(spg, tmp_path):
    """1-8 bytes replaced at random: a file that still reads is summarised (exit 0), anything else is exit 2."""
    fancy = tmp_path / "fancy.tflite"
    fancy.write_bytes(fancy_lstm(spg)[0])
    seeds = [CORPUS / "tflite-micro__trained_lstm_int8.tflite", fancy, small_file(spg, tmp_path)]
    jobs = [{"id": f"{s.stem}-{k}", "seed": str(s), "op": "mutate", "param": k, "split": "if-ok" if k % 5 == 0
             else False, "allowed": [0, 2]} for s in seeds for k in range(200)]
    records = run_batch(jobs, tmp_path / "work")
    check_records(records, expected=len(jobs), what="mutated .tflite")
    assert {r["summary"]["exit_code"] for r in records} == {0, 2}  # both outcomes occur

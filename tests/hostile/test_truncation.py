"""Truncation: a download or a training job cut short. Every prefix of a model file is an error.

- the 12,720-byte legacy LSTM seed: every length from 0 to 12,719 bytes;
- the sample `.keras` and a `.weights.h5`: 1,000 sampled lengths each.

Every case: exit 2, one line on stderr, no traceback, no crash or hang; for a sample of the cases
split-gates also runs and must leave its output folder empty.
"""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from ._harness import check_records, run_batch

SPLIT_EVERY = 25  # split-gates on every 25th case as well (about 600 runs)


def _jobs(seed: Path, lengths: list[int], name: str) -> list[dict]:
    return [{"id": f"{name}-{n}", "seed": str(seed), "op": "truncate", "param": n, "split": i % SPLIT_EVERY == 0,
             "allowed": [2]} for i, n in enumerate(lengths)]


def test_truncate_legacy_h5_at_every_offset(seeds, tmp_path: Path) -> None:
    size = seeds["legacy"].stat().st_size
    assert size == 12_720
    records = run_batch(_jobs(seeds["legacy"], list(range(size)), "legacy"), tmp_path)
    check_records(records, expected=size, what="truncated legacy .h5")


@pytest.mark.parametrize("seed_name", ["keras", "weights"])
def test_truncate_at_1000_sampled_offsets(seeds, seed_name: str, tmp_path: Path) -> None:
    seed = seeds[seed_name]
    size = seed.stat().st_size
    lengths = sorted(random.Random(f"truncate-{seed_name}").sample(range(size), 1000))
    records = run_batch(_jobs(seed, lengths, seed_name), tmp_path)
    check_records(records, expected=1000, what=f"truncated {seed.name}")

"""Random damage: 3,000 seeded mutations of 1-8 bytes, 1,000 on each of the three seeds.

The seeds: the 12,720-byte legacy LSTM (the very file the hdf5-crashers came from), the sample
`.keras` and a Keras 3 `.weights.h5`. Every case must end in exit 0, 1 or 2 within the timeout, with
no traceback and, on failure, one line on stderr; exit 3 (internal error) fails. A case that crashes
or hangs libhdf5 still has to give exit 2 and is kept under tests/fixtures/crashers/ (a new one fails
the test until it is committed with a README line). split-gates also runs on every 10th case, and on
every 3rd case that summary could read (it reads the weight bytes, summary does not); it must leave
either the finished output or nothing. The summary format rotates over table, JSON and Markdown.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from ._harness import check_records, run_batch

CASES_PER_SEED = 1000
SPLIT_EVERY = 10
FORMATS = ("table", "json", "markdown", "json")  # every renderer sees damaged names; json is the cheapest
SEED_BASE = {"legacy": 1_000_000, "keras": 2_000_000, "weights": 3_000_000}


@pytest.mark.parametrize("seed_name", ["legacy", "keras", "weights"])
def test_random_byte_mutations(seeds, seed_name: str, tmp_path: Path) -> None:
    seed = seeds[seed_name]
    jobs = [{"id": f"{seed_name}-{i}", "seed": str(seed), "param": SEED_BASE[seed_name] + i,
             "op": "mutate-crc" if seed_name == "keras" and i % 2 else "mutate",
             "split": True if i % SPLIT_EVERY == 0 else "if-ok" if i % 3 == 0 else False, "allowed": [0, 1, 2], "format": FORMATS[i % len(FORMATS)]}
            for i in range(CASES_PER_SEED)]
    records = run_batch(jobs, tmp_path)
    check_records(records, expected=CASES_PER_SEED, what=f"mutations of {seed.name}")

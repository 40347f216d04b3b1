"""The live dashboard in a real browser: headless Chromium loads /dashboard from a real `kvserve serve` (the
default model) under load, and the rendered DOM shows the block counts that the load implies
(scripts/dashboard_check.py does the work; it also makes the README's screenshot).

Skipped only where Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it) or the
websockets package is missing. About a minute, most of it the server's start.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "dashboard_check.py"


def load_check():
    spec = importlib.util.spec_from_file_location("dashboard_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


check = load_check()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.skipif(check.chromium_binary() is None, reason="needs chromium (apt-get install chromium)"),
    pytest.mark.skipif(importlib.util.find_spec("websockets") is None, reason="needs the websockets package"),
]


@pytest.fixture(scope="module")
def dom(tmp_path_factory):
    return check.run_check(tmp_path_factory.mktemp("dashboard-check")).dom


def test_the_page_rendered_live_data(dom):
    assert dom["updates"] >= 2 and dom["phase"] == "ready"
    assert dom["points"] > 0  # the roofline has the last minute's steps


def test_the_legend_shows_the_counts_the_load_implies(dom):
    # the warm-up's 64-token prompt: 4 cached-free blocks; a and b hold their common 32-token prefix: 2 shared
    assert (dom["counts"]["cached"], dom["counts"]["shared"]) == ("4", "2")
    assert (dom["running"], dom["waiting"]) == ("3", "0")
    assert int(dom["counts"]["free"]) + int(dom["counts"]["used"]) == check.NUM_BLOCKS


def test_the_grid_draws_every_block_in_its_state(dom):
    cells, counts = dom["cells"], dom["counts"]
    assert cells["total"] == check.NUM_BLOCKS
    assert (cells["c"], cells["s"]) == (4, 2)
    assert cells["u"] + cells["s"] == int(counts["used"]) == cells["owned"]  # every block in use has a colour
    assert cells["f"] + cells["c"] == int(counts["free"])


def test_the_request_rows_add_up_to_the_blocks_in_use(dom):
    rows = dom["rows"]
    assert [r["status"] for r in rows] == ["running"] * 3
    # each shared block is in two requests' tables
    assert sum(r["blocks"] for r in rows) == int(dom["counts"]["used"]) + 2

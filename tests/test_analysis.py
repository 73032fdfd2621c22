"""analysis/: the paper's tables, reading runs and plots, on a real MLflow store written exactly
as docs/TRACKING.md says.

No mocks: one sqlite store per module (``tests/analysis_store.py``) holds sweeps and trial runs
made with ``MlflowClient``. Here: ``analysis/paper_tables.yaml`` equals the shared reference and
its rows match normalised settings; ``analysis.runs`` finds the latest sweep and joins trials by
config hash through paging; ``analysis.plots`` writes and logs its figures. The tables and their
CLI are tested in ``test_analysis_tables.py``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml

from analysis import paper, plots, runs, tables
from p2m_core.errors import P2MInputError
from tests.analysis_store import EXPERIMENT, build_store

SHARED_REFERENCE = Path(
    os.environ.get("P2M_SHARED_REFERENCE", Path(__file__).resolve().parents[2] / "shared" / "reference" / "paper_tables.yaml")
)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The store of ``tests/analysis_store.py``, once per module."""
    return build_store(tmp_path_factory.mktemp("mlstore"))


# ------------------------------------------------------------------------------------------ paper


def test_paper_yaml_equals_shared_reference():
    if not SHARED_REFERENCE.is_file():
        message = f"shared paper tables missing at {SHARED_REFERENCE}"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    ours = yaml.safe_load(paper.PAPER_TABLES_PATH.read_text())
    reference = yaml.safe_load(SHARED_REFERENCE.read_text())
    assert ours == reference  # every table, row, number and key


def test_paper_rows_match_normalised_settings():
    frame = paper.paper_frame("table3_maps")
    assert list(frame.columns) == ["maps", "PQ", "PQ_th", "PQ_st"]
    assert paper.match_row("table3_maps", {"pseudo.maps": ["semantic", "boundary_low"]}) == {"PQ": 51.1, "PQ_th": 49.1, "PQ_st": 90.3}
    assert paper.match_row("table3_maps", {"pseudo.maps": ["boundary_low", "semantic"]}) is None  # order matters
    assert paper.match_row("table6_centroid_iterations", {"pseudo.centroid_iters": 8.0}) == {"PQ": 54.24}
    assert paper.match_row("table7_assignment", {"pseudo.k_scheme": "mc"}) is None
    assert paper.row_key("table4_semantic_losses") == "terms"
    with pytest.raises(P2MInputError, match="table99"):
        paper.paper_table("table99")


# ------------------------------------------------------------------------------------------- runs


def test_latest_sweep_is_chosen(store):
    client = store["client"]
    assert runs.find_sweep(client, "table7").info.run_id == store["table7"]
    assert runs.find_sweep(client, "table7", EXPERIMENT).info.run_id == store["table7"]
    with pytest.raises(runs.NoSweepError, match=r"'beta'.*'empty'"):
        runs.find_sweep(client, "beta", "empty")
    with pytest.raises(P2MInputError, match="no experiment named 'nope'"):
        runs.find_sweep(client, "table7", "nope")


def test_trial_frame_joins_by_hash(store):
    client = store["client"]
    frame = runs.trial_frame(client, runs.find_sweep(client, "table7"))
    assert len(frame) == 6 and list(frame["seed"]) == [0, 0, 1, 1, 2, 2]
    row = lambda a, s: frame[(frame["pseudo.assignment"] == a) & (frame["seed"] == s)].iloc[0]  # noqa: E731
    assert row("ot", 0)["run_id"] == store["ot0"] and row("ot", 0)["PQ"] == 52.5  # latest FINISHED, not KILLED/older
    assert row("mc", 1)["PQ"] == 54.0  # the newer FAILED run is ignored
    assert row("ot", 1)["run_id"] == store["ot1"] and row("ot", 1)["parent_run_id"] == store["table5"]
    assert bool(row("ot", 2)["missing"]) and pd.isna(row("ot", 2)["run_id"]) and math.isnan(row("ot", 2)["PQ"])
    assert frame["missing"].sum() == 1


def test_paging_reads_every_run(store, monkeypatch):
    client = store["client"]
    expected, _ = tables.build_table(client, "table7")
    monkeypatch.setattr(runs, "PAGE_SIZE", 2)
    paged, _ = tables.build_table(client, "table7")
    pd.testing.assert_frame_equal(expected, paged)


# ------------------------------------------------------------------------------------------ plots


def test_plots_written_and_logged(store, tmp_path):
    from PIL import Image

    client = store["client"]
    written = plots.make_plots(client, tmp_path / "plots")
    names = sorted(p.name for p in written)
    # the figures made for the paper's sweeps, then every numeric grid axis of any sweep
    assert names == ["sinkhorn.png", "sinkhorn_by_sinkhorn_epsilon.png", "sinkhorn_by_sinkhorn_iters.png",
                     "sinkhorn_epsilon.png", "table6_by_centroid_iters.png", "table6_centroid_iters.png",
                     "table7_overlays.png"]
    for path in written:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] >= 300 and image.size[1] >= 200
    for sweep, expected in (("table6", {"plots/table6_centroid_iters.png", "plots/table6_by_centroid_iters.png"}),
                            ("sinkhorn", {"plots/sinkhorn.png", "plots/sinkhorn_epsilon.png", "plots/sinkhorn_by_sinkhorn_epsilon.png",
                                          "plots/sinkhorn_by_sinkhorn_iters.png"}),
                            ("table7", {"plots/table7_overlays.png"})):
        assert {f.path for f in client.list_artifacts(store[sweep], "plots")} == expected


def test_plots_cli_no_sweep(store, tmp_path, capsys):
    code = plots.main(["--tracking-uri", store["uri"], "--experiment", "empty", "--out", str(tmp_path / "p"), "--no-log"])
    assert code == 2
    err = capsys.readouterr().err
    assert "error: " in err and "no sweep of table6, sinkhorn, table7" in err
    assert not (tmp_path / "p").exists()

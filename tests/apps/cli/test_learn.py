"""`assay learn` on a tiny embedded world, `assay labels import` errors, `assay labels remove-pseudo`."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from apps.cli.main import app, main

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    from actors.catalog.world import make_world

    root = tmp_path_factory.mktemp("learn")
    make_world(root / "world", seed=5, n_images=24, size=(128, 96), object_area=(0.02, 0.06),
               classes=("shape",), workers=1, workspace=root / "ws")
    return root


@pytest.mark.slow
def test_learn_writes_a_curve_estimate_can_read(tiny_world):
    ws = str(tiny_world / "ws")
    res = runner.invoke(app, ["learn", "--workspace", ws, "--rounds", "1", "--budget", "3", "--initial", "4",
                              "--epochs", "1", "--strategy", "uncertainty_robustness", "--pseudo", "--run", "r1",
                              "--warm-start", "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["n_labeled"] == [4, 7] and len(rep["map50"]) == 2
    curve = pq.read_table(tiny_world / "ws" / "runs" / "r1" / "curve.parquet").to_pylist()
    assert [r["round"] for r in curve] == [0, 1] and {"n_labeled", "n", "metric", "value"} <= set(curve[0])
    from actors.core.workspace import Workspace
    from actors.detection.train import read_checkpoint

    cks = [read_checkpoint(Workspace(ws), f"runs/r1/models/round-{r}.pt")["config"] for r in (0, 1)]
    assert "init" not in cks[0] and "init" in cks[1]  # round 1 fine-tuned round 0's model (warm start)
    labeled = pq.read_table(tiny_world / "ws" / "runs" / "r1" / "labeled.parquet").to_pylist()
    assert len(labeled) == 7 and len({r["image_id"] for r in labeled}) == 7
    # pseudo rows of the run go away by run
    res = runner.invoke(app, ["labels", "remove-pseudo", "--run", "r1", "--workspace", ws, "--json"])
    assert res.exit_code == 0, res.output
    labels = pq.read_table(tiny_world / "ws" / "catalog" / "labels.parquet").to_pylist()
    assert not [r for r in labels if r["source"] == "pseudo" and r["run_id"] == "r1"]


def test_learn_unknown_strategy_is_a_one_line_error(tiny_world, capsys):
    code = main(["learn", "--workspace", str(tiny_world / "ws"), "--strategy", "nope"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args,msg", [(["--rounds", "-1"], "--rounds must be >= 0, got -1"),
                                      (["--budget", "0"], "--budget must be >= 1, got 0")])
def test_learn_rounds_and_budget_that_do_nothing_are_one_line_errors(tmp_path, capsys, args, msg):
    assert main(["learn", "--workspace", str(tmp_path / "ws"), *args]) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ws").exists()  # nothing was trained or written


def test_labels_import_unknown_image_one_line_error(tiny_world, tmp_path, capsys):
    bad = tmp_path / "team.json"
    bad.write_text(json.dumps({"images": [{"id": 1, "file_name": "nowhere.jpg"}], "annotations": [],
                               "categories": [{"id": 1, "name": "circle"}]}))
    before = (tiny_world / "ws" / "catalog" / "labels.parquet").read_bytes()
    code = main(["labels", "import", str(bad), "--workspace", str(tiny_world / "ws")])
    err = capsys.readouterr().err
    assert code == 2 and "nowhere.jpg" in err and len(err.strip().splitlines()) == 1
    assert (tiny_world / "ws" / "catalog" / "labels.parquet").read_bytes() == before

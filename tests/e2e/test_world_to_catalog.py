"""The embedded world, through the CLI, into a catalog later steps can read."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from actors.catalog.schema import load_images, load_labels
from apps.cli.main import app

runner = CliRunner()


def test_world_to_catalog_and_reingest(tmp_path):
    out, ws = tmp_path / "world", tmp_path / "ws"
    res = runner.invoke(app, ["world", "--out", str(out), "--seed", "7", "--images", "20", "--size", "128x96",
                              "--workspace", str(ws)])
    assert res.exit_code == 0, res.output
    cat = json.loads(runner.invoke(app, ["catalog", "-w", str(ws), "--json"]).stdout)
    assert cat["images"] == 20 and cat["images_by_status"] == {"ok": 20}
    assert set(cat["images_by_split"]) == {"train", "val", "pool", "queries"}
    queries = load_images(ws, split="queries")
    q_labels = load_labels(ws, split="queries")
    assert set(q_labels["image_id"].to_pylist()) == set(queries["image_id"].to_pylist())
    n_labels = cat["labels"]
    for split in ("train", "pool"):  # re-ingesting the world's files adds nothing
        res = runner.invoke(app, ["ingest", str(out / "annotations" / f"{split}.json"), "-w", str(ws), "--json"])
        rep = json.loads(res.stdout)
        assert rep["added"] == 0 and rep["labels_added"] == 0
    res = runner.invoke(app, ["ingest", str(out / "images"), "-w", str(ws), "--json"])
    assert json.loads(res.stdout)["already_present"] == 20
    after = json.loads(runner.invoke(app, ["catalog", "-w", str(ws), "--json"]).stdout)
    assert after["images"] == 20 and after["labels"] == n_labels

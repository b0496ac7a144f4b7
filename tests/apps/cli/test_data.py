from __future__ import annotations

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from actors.core.errors import UserError
from apps.cli.main import app, main

runner = CliRunner()


def _folder(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 9, 3), 40 * i, np.uint8)).save(d / f"{i}.jpg")
    (d / "bad.jpg").write_text("hello")
    return d


def test_ingest_then_catalog_json(tmp_path):
    ws = str(tmp_path / "ws")
    res = runner.invoke(app, ["ingest", str(_folder(tmp_path)), "--workspace", ws, "--split", "pool", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["added"] == 4 and report["errors"] == 1
    assert report["failures"][0].endswith("bad.jpg: not an image")
    res = runner.invoke(app, ["catalog", "--workspace", ws, "--json"])
    assert res.exit_code == 0
    assert json.loads(res.stdout)["images_by_split"] == {"pool": {"error": 1, "ok": 3}}


def test_ingest_table_lists_failed_rows(tmp_path):
    res = runner.invoke(app, ["ingest", str(_folder(tmp_path)), "-w", str(tmp_path / "ws")])
    assert res.exit_code == 0
    assert "1 rows failed: not an image (1)" in res.stdout and "bad.jpg: not an image" in res.stdout
    res = runner.invoke(app, ["catalog", "-w", str(tmp_path / "ws")])
    assert res.exit_code == 0 and "not an image" in res.stdout


def test_no_check_headers_manifest(tmp_path):
    (tmp_path / "m.csv").write_text("uri,split\ns3://b/x.jpg,pool\ns3://b/y.jpg,pool\n")
    res = runner.invoke(app, ["ingest", str(tmp_path / "m.csv"), "-w", str(tmp_path / "ws"),
                              "--no-check-headers", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["added"] == 2


def test_bad_sources_give_one_line_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    ws = str(tmp_path / "ws")
    res = runner.invoke(app, ["ingest", str(tmp_path / "empty"), "-w", ws])
    assert res.exit_code != 0 and isinstance(res.exception, UserError)
    assert main(["ingest", str(tmp_path / "empty"), "-w", ws]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "empty folder" in err and str(tmp_path / "empty") in err
    assert len(err.splitlines()) == 1
    assert main(["ingest", str(tmp_path / "nope.json"), "-w", ws]) == 2
    assert "nope.json: no such file or folder" in capsys.readouterr().err
    assert not (tmp_path / "ws").exists()


def test_world_command(tmp_path):
    from actors.catalog.world import WorldConfig

    out = tmp_path / "w"
    res = runner.invoke(app, ["world", "--out", str(out), "--seed", "1", "--images", "12", "--size", "96x64",
                              "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["n_images"] == 12 and summary["workspace"] == str(out / "workspace")
    res = runner.invoke(app, ["world", "--out", str(out), "--images", "12", "--size", "96"])
    assert res.exit_code != 0
    assert set(summary["categories"]) == set(WorldConfig().categories())
    res = runner.invoke(app, ["world", "--out", str(tmp_path / "v"), "--images", "12", "--size", "96x64",
                              "--classes", "vehicle, shape", "--json"])
    assert res.exit_code == 0, res.output
    assert set(json.loads(res.stdout)["categories"]) == {"car", "van", "bicycle", "train", "aircraft", "boat",
                                                        "circle", "triangle", "square", "star", "ring", "cross"}
    assert main(["world", "--out", str(tmp_path / "z"), "--classes", "zebra"]) == 2


def test_ingest_recheck_turns_a_restored_file_ok(tmp_path, capsys):
    ws = str(tmp_path / "ws")
    (tmp_path / "m").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "m" / "a.png")
    (tmp_path / "m" / "m.csv").write_text("uri\na.png\nb.png\n")
    assert main(["ingest", str(tmp_path / "m" / "m.csv"), "-w", ws, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["errors"] == 1
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "m" / "b.png")
    assert main(["ingest", "--recheck", "-w", ws, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"checked": 1, "recovered": 1, "still_failing": 0,
                                                   "errors_by_reason": {}}
    assert main(["ingest", "-w", ws]) == 2
    assert "--recheck" in capsys.readouterr().err


def test_ingest_into_a_workspace_that_is_a_file_is_one_line_naming_it(tmp_path, capsys):
    f = tmp_path / "ws.txt"
    f.write_text("not a folder")
    assert main(["ingest", str(_folder(tmp_path)), "-w", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {f}: is a file, not a folder")

"""`assay compress` on a detector trained by `assay learn` on a tiny world: files, a report whose figures are
re-measured from the written files (not assumed), and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from apps.cli.main import main


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    from actors.catalog.world import make_world

    root = tmp_path_factory.mktemp("compress")
    make_world(root / "world", seed=5, n_images=24, size=(128, 96), object_area=(0.02, 0.06),
               classes=("shape",), workers=1, workspace=root / "ws")
    ws = str(root / "ws")
    assert main(["learn", "--workspace", ws, "--rounds", "1", "--budget", "2", "--initial", "6", "--epochs", "2",
                 "--run", "r1"]) == 0
    out = root / "out"
    code = main(["compress", "--workspace", ws, "--run", "r1", "--latency", "0.5", "--int8", "--out", str(out),
                 "--epochs", "1", "--timing-runs", "2", "--json"])
    assert code == 0
    return root, out


@pytest.mark.slow
def test_compress_writes_models_and_a_report_whose_accuracy_is_measured_not_assumed(compressed):
    from actors.compression.export import load_compressed, onnx_session
    from actors.compression.finetune import evaluate_outputs, load_split, onnx_runner
    from actors.core.workspace import Workspace

    root, out = compressed
    for name in ("model.onnx", "model.int8.onnx", "model.pt", "report.json", "summary.md"):
        assert (out / name).stat().st_size > 0, name
    rep = json.loads((out / "report.json").read_text())
    assert set(rep["models"]) == {"original", "compressed", "compressed_int8"}
    plan = rep["plan"]  # a budget the LUT cannot reach is reported as infeasible, never called on-budget
    assert plan["predicted_ms"] < plan["full_ms"]
    on_budget = plan["predicted_ms"] <= plan["target_ms"] + 1e-9
    assert on_budget == plan["feasible"]
    assert rep["models"]["compressed"]["macs"] < rep["models"]["original"]["macs"]
    for m in rep["models"].values():
        assert m["latency_ms"]["p50"] > 0 and 0 <= m["accuracy"]["map50"] <= 1
    net, det = load_compressed(str(out / "model.pt"))
    val = load_split(Workspace(str(root / "ws")), "val", det.classes)
    again = evaluate_outputs(onnx_runner(onnx_session(str(out / "model.int8.onnx"))), net.head, val, det.classes)
    assert again["map50"] == pytest.approx(rep["models"]["compressed_int8"]["accuracy"]["map50"])
    x = torch.rand(1, 3, 93, 131)  # an odd size the model was not exported at
    with torch.no_grad():
        ref = net(x)
    got = onnx_session(str(out / "model.onnx")).run(None, {"images": x.numpy()})
    assert all(np.abs(g - r.numpy()).max() < 1e-3 * (1 + r.abs().max().item()) for g, r in zip(got, ref))
    assert "| compressed_int8 |" in (out / "summary.md").read_text()


@pytest.mark.slow
def test_compress_errors_are_one_line(compressed, tmp_path, capsys):
    root, _ = compressed
    ws = str(root / "ws")
    assert main(["compress", "--workspace", ws, "--run", "nope", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no detector checkpoint" in err and len(err.strip().splitlines()) == 1
    bad = root / "ws" / "runs" / "bad" / "models"
    bad.mkdir(parents=True)
    (bad / "round-0.pt").write_bytes(b"\x00corrupt")
    assert main(["compress", "--workspace", ws, "--run", "bad", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "round-0.pt" in err and len(err.strip().splitlines()) == 1
    assert main(["compress", "--workspace", ws, "--run", "r1", "--latency", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--latency" in capsys.readouterr().err

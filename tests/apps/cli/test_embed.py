"""`assay backbone list|train` and `assay embed` through the CLI on a tiny embedded world."""

from __future__ import annotations

import json

from actors.features.store import feature_meta
from actors.core.workspace import Workspace
from apps.cli.main import main


def test_backbone_list(capsys):
    assert main(["backbone", "list", "--json"]) == 0
    names = [r["name"] for r in json.loads(capsys.readouterr().out)]
    assert {"assay-small", "resnet18", "torchscript"} <= set(names)


def test_train_then_embed_a_tiny_world(tmp_path, capsys):
    from actors.catalog.world import make_world

    ws = make_world(tmp_path / "world", seed=1, n_images=16, size=(128, 96), workers=1).workspace
    assert main(["embed", "-w", ws, "--local"]) == 2  # no assay-small weights yet: a one-line user error
    assert "assay backbone train" in capsys.readouterr().err
    assert main(["backbone", "train", "-w", ws, "--epochs", "2", "--crop", "32", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["checkpoint"] == "models/assay-small.pt" and rep["n_train"] > 0
    assert main(["embed", "-w", ws, "--local", "--batch-size", "4", "--shard-size", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_embedded"] == out["n_images"] > 0 and out["cell_stride"] == 16 and out["dim"] == 64
    assert out["codec"] == "pq" and out["bytes_per_image"] == (128 // 16) * (96 // 16) * 32  # 32 bytes per cell
    assert feature_meta(Workspace(ws), "assay-small")["weights_id"] != "random-init"

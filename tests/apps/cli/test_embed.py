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
    assert main(["embed", "-w", ws, "--local", "-b", "assay-small"]) == 2  # no weights yet: a one-line user error
    assert "assay backbone train" in capsys.readouterr().err
    assert main(["backbone", "train", "-w", ws, "--epochs", "2", "--crop", "32", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["checkpoint"] == "models/assay-small.pt" and rep["n_train"] > 0
    assert main(["embed", "-w", ws, "--local", "-b", "assay-small", "--batch-size", "4", "--shard-size", "4",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_embedded"] == out["n_images"] > 0 and out["cell_stride"] == 16 and out["dim"] == 64
    assert out["codec"] == "pq" and out["bytes_per_image"] == (128 // 16) * (96 // 16) * 32  # 32 bytes per cell
    assert feature_meta(Workspace(ws), "assay-small")["weights_id"] != "random-init"


def test_embed_index_mine_with_no_flags_use_the_pretrained_lite0(tmp_path, capsys, monkeypatch):
    """What a user runs: `assay embed`, `assay index`, `assay mine` with no flag and nothing trained: the frozen
    ImageNet EfficientNet-Lite0 trunk at stride 16 (weights from its pip package), found by index and mine under the
    same default store name; a 6-image job with no Ray to join runs in-process and says so."""
    import actors.features.embed as embed
    import actors.selection.mine as mine
    from actors.features.encoder import store_name
    from apps import jobs
    from tests.apps.test_jobs import make_images, make_query

    assert embed.DEFAULT_BACKBONE == jobs.DEFAULT_BACKBONE == "efficientnet-lite0"
    assert mine.DEFAULT_MODEL == jobs.DEFAULT_MODEL == store_name(embed.DEFAULT_BACKBONE)
    ws = str(tmp_path / "ws")
    make_images(tmp_path / "in", 6)
    jobs.ingest_step(ws, str(tmp_path / "in"), split="pool")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("ASSAY_CLUSTER_DIR", str(tmp_path / "no-head"))
    monkeypatch.setattr("actors.core.runtime.ray_running", lambda: None)  # as if this test process had no Ray
    assert main(["embed", "-w", ws, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["model"], out["backbone"], out["n_embedded"]) == ("efficientnet-lite0", "efficientnet-lite0", 6)
    assert out["mode"] == "local" and out["path"].startswith("in-process: 6 images < ")
    meta = feature_meta(Workspace(ws), "efficientnet-lite0")
    assert (meta["backbone"], meta["backbone_cfg"]) == ("efficientnet-lite0", embed.DEFAULT_BACKBONE_CFG)
    assert (meta["backbone_dim"], meta["backbone_stride"], meta["stride"]) == (112, 16, 16)  # block 11, 16-px cells
    assert (meta["codec"], out["bytes_per_image"]) == ("pq", (128 // 16) * (96 // 16) * 56)  # 56 bytes per cell
    assert meta["weights_id"] != "random-init" and not Workspace(ws).exists("models")  # nothing was trained
    assert main(["index", "-w", ws, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["images"] == 6
    q, box = make_query(tmp_path / "q.png")
    assert main(["mine", "-w", ws, "--image", q, "--box", ",".join(map(str, box)), "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert len(hits) == 3 and all(h["image_id"] for h in hits)


def test_embed_stride_8_keeps_lite0s_block_5_in_its_own_store(tmp_path, capsys):
    """`assay embed --stride 8 --name S`: the Lite0 trunk cut at block 5 (40 channels, stride 8), recorded in the store
    manifest; the default store is untouched."""
    from apps import jobs
    from tests.apps.test_jobs import make_images

    ws = str(tmp_path / "ws")
    make_images(tmp_path / "in", 3)
    jobs.ingest_step(ws, str(tmp_path / "in"), split="pool")
    assert main(["embed", "-w", ws, "--local", "--stride", "8", "--name", "lite0-s8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["model"], out["n_embedded"]) == ("lite0-s8", 3)
    meta = feature_meta(Workspace(ws), "lite0-s8")
    assert (meta["backbone_dim"], meta["backbone_stride"], meta["backbone_cfg"]["stride"]) == (40, 8, 8)
    assert not Workspace(ws).exists("features/efficientnet-lite0")

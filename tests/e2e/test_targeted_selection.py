"""End to end on a tiny world: world -> catalog -> backbone (tiny training) -> embed -> `assay index` -> `assay mine`."""

from __future__ import annotations

import json

from actors.catalog.schema import IMAGES, LABELS
from actors.catalog.world import make_world
from actors.features.embed import embed_pool
from actors.features.small import train_backbone


def test_world_to_mine_through_the_cli(tmp_path, capsys):
    from actors.core.workspace import Workspace
    from apps.cli.main import main

    make_world(tmp_path / "world", seed=0, n_images=40, size=(256, 192), workers=1)
    ws = Workspace(tmp_path / "world" / "workspace")
    train_backbone(ws, epochs=1, max_minutes=0.2, max_windows=200, progress=False)
    embed_pool(ws, model="assay-small", splits=("pool",), local=True, progress=False)

    assert main(["index", "-w", ws.uri, "--model", "assay-small", "--json"]) == 0
    region, glob = json.loads(capsys.readouterr().out)
    assert region["images"] == glob["images"] > 0 and region["factory"] == "Flat"

    images = ws.read_table(IMAGES).to_pylist()
    labels = ws.read_table(LABELS).to_pylist()
    queries = {r["image_id"]: r["uri"] for r in images if r["split"] == "queries"}
    lab = next(r for r in labels if r["image_id"] in queries)
    box = ",".join(f"{lab[k]:.1f}" for k in ("x0", "y0", "x1", "y1"))
    for method in ("template", "global"):
        assert main(["mine", "-w", ws.uri, "--image", queries[lab["image_id"]], "--box", box, "--top-k", "5",
                     "--model", "assay-small", "--method", method, "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert len(out["hits"]) == 5 and all(h["uri"] for h in out["hits"])
        assert ws.exists(f"selections/{out['query_id']}.parquet") and ws.exists(f"queries/{out['query_id']}.json")
        if method == "template":  # re-ranked at the object's scale: crop cosines, one scale for every query
            assert out["reranked"] > 0 and all(-1 <= h["score"] <= 1 for h in out["hits"])
            template = out
    # "not this": a negative box changes the query (and its id); more like two hits of the saved selection
    neg = ",".join(f"{v:.1f}" for v in (0, 0, 20, 20))
    assert main(["mine", "-w", ws.uri, "--image", queries[lab["image_id"]], "--box", box, "--negative-box", neg,
                 "--top-k", "5", "--model", "assay-small", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["query_id"] != template["query_id"]
    chosen = [h["image_id"] for h in template["hits"][:2]]
    assert main(["mine", "-w", ws.uri, "--more-like", template["query_id"], "--ids", ",".join(chosen),
                 "--top-k", "5", "--model", "assay-small", "--json"]) == 0
    more = json.loads(capsys.readouterr().out)
    assert more["query"]["more_like"] == template["query_id"] and len(more["hits"]) == 5
    assert not set(chosen) & {h["image_id"] for h in more["hits"]}
    assert main(["mine", "-w", ws.uri, "--more-like", template["query_id"], "--ids", "nope", "-m", "assay-small"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["show", template["query_id"], "-w", ws.uri, "--json"]) == 0
    sheet = json.loads(capsys.readouterr().out)["sheet"]
    from PIL import Image

    assert Image.open(sheet).size[0] > 0 and sheet.endswith(f"{template['query_id']}.png")

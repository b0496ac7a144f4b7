"""`assay index` / `assay mine` through the CLI on a tiny synthetic feature store."""

from __future__ import annotations

import json

import numpy as np
import pytest

from actors.features.store import FeatureMap, encode_rows
from actors.core.shards import ShardedDataset
from apps.cli.main import main
from apps.cli.select import parse_box
from tests.actors.selection.test_export import saved  # noqa: F401  (fixture)


def _store(ws, n=9):
    rng = np.random.default_rng(0)
    fms = [FeatureMap(f"img{k}", rng.normal(size=(8, 6, 8)).astype(np.float16), 16.0, 16.0) for k in range(n)]
    ds = ShardedDataset(ws, "features/toy")
    (s,) = ds.plan([f.image_id for f in fms], shard_size=100, meta={"model": "toy", "dim": 8})
    by_id = {f.image_id: f for f in fms}
    ds.write_shard(s, encode_rows([by_id[k] for k in s.keys]))  # rows in the shard's key order


def test_index_then_mine_by_pool_image_id(workspace, capsys):
    _store(workspace)
    assert main(["index", "-w", workspace.uri, "--model", "toy", "--json"]) == 0
    kinds = json.loads(capsys.readouterr().out)
    assert [(m["kind"], m["n"], m["images"]) for m in kinds] == [("region", 9 * 12, 9), ("global", 9, 9)]  # 2×2
    assert main(["index", "-w", workspace.uri, "--model", "toy", "--cell-pool", "1", "--json"]) == 0  # rebuilds
    region = json.loads(capsys.readouterr().out)[0]
    assert (region["n"], region["cell_pool"], region["generation"]) == (9 * 48, 1, 2)
    assert main(["mine", "-w", workspace.uri, "--model", "toy", "--image", "img4", "--box", "32,16,64,48",
                 "--top-k", "3", "--keep-query", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["hits"][0]["image_id"] == "img4" and out["hits"][0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert out["hits"][0]["box"] == [32.0, 16.0, 64.0, 48.0] and len(out["hits"]) == 3
    kept = [h["image_id"] for h in out["hits"]]
    assert workspace.exists(f"selections/{out['query_id']}.parquet")
    assert main(["mine", "-w", workspace.uri, "--model", "toy", "--image", "img4", "--box", "32,16,64,48",
                 "--top-k", "3", "--candidates", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_candidates"] == 4
    assert main(["mine", "-w", workspace.uri, "--model", "toy", "--image", "img4", "--box", "32,16,64,48",
                 "--top-k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)  # by default the query image is no hit of itself, and 3 still come
    hits = [h["image_id"] for h in out["hits"]]
    assert out["query_image_left_out"] == "img4" and len(hits) == 3 and "img4" not in hits and hits[:2] == kept[1:]
    rows = workspace.read_table(f"selections/{out['query_id']}.parquet").to_pylist()
    assert [r["image_id"] for r in rows] == [h["image_id"] for h in out["hits"]] and {r["uri"] for r in rows} == {""}
    assert main(["mine", "-w", workspace.uri, "--model", "toy", "--image", "img4", "--box", "32,16,64,48",
                 "--candidates", "0"]) == 2
    capsys.readouterr()
    assert main(["mine", "-w", workspace.uri, "--model", "toy", "--image", "img4", "--method", "global",
                 "--top-k", "2", "--keep-query"]) == 0
    assert "img4" in capsys.readouterr().out


def test_mine_batch_of_queries_from_a_file(workspace, tmp_path, capsys):
    _store(workspace)
    main(["index", "-w", workspace.uri, "--model", "toy", "--json"])
    capsys.readouterr()
    f = tmp_path / "q.json"
    f.write_text(json.dumps([{"image": "img1", "boxes": [[0, 0, 32, 32]], "top_k": 2, "model": "toy"},
                             {"image": "img2", "boxes": [[0, 0, 32, 32], [64, 32, 96, 64]], "top_k": 1,
                              "model": "toy"}]))
    assert main(["mine", "-w", workspace.uri, "--queries", str(f), "--keep-query", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [len(r["hits"]) for r in out] == [2, 1] and out[0]["hits"][0]["image_id"] == "img1"


@pytest.mark.parametrize("args,msg", [
    (["--box", "1,2,3"], "x0,y0,x1,y1"),
    (["--box", "100,90,200,120"], "outside the image"),
    (["--box", "1,2,3,4", "--method", "nearest"], "method"),
])
def test_user_errors_are_one_line_exit_2(workspace, capsys, args, msg):
    _store(workspace, n=3)
    main(["index", "-w", workspace.uri, "--model", "toy", "--json"])
    capsys.readouterr()
    assert main(["mine", "-w", workspace.uri, "--model", "toy", "--image", "img0", *args]) == 2
    assert msg in capsys.readouterr().err


def test_mine_without_an_index_says_how_to_build_it(workspace, capsys):
    _store(workspace, n=2)
    assert main(["mine", "-w", workspace.uri, "--model", "toy", "--image", "img0", "--box", "0,0,16,16"]) == 2
    assert "assay index" in capsys.readouterr().err


def test_parse_box():
    assert parse_box("1, 2,3.5,4") == (1.0, 2.0, 3.5, 4.0)


def test_cli_constants_mirror_the_library():
    import actors.selection.mine
    import apps.cli.select as cs

    assert cs.DEFAULT_MODEL == actors.selection.mine.DEFAULT_MODEL
    assert tuple(cs.METHODS) == tuple(actors.selection.mine.METHODS)
    assert cs.RERANK_TOP == actors.selection.mine.RERANK_TOP


# ----------------------------------------------------------------------------------------------- sharded index
def _more(ws, start, n):
    """Embed ``n`` more toy images (img<start>..) in a new store shard, as a later `assay embed` would."""
    rng = np.random.default_rng(start)
    fms = [FeatureMap(f"img{k}", rng.normal(size=(8, 6, 8)).astype(np.float16), 16.0, 16.0)
           for k in range(start, start + n)]
    ds = ShardedDataset(ws, "features/toy")
    s = ds.plan([f.image_id for f in fms], shard_size=100, meta={"model": "toy", "dim": 8})[-1]  # the new one
    by_id = {f.image_id: f for f in fms}
    ds.write_shard(s, encode_rows([by_id[k] for k in s.keys]))


QUERIES = [{"image": "img4", "boxes": [[32, 16, 64, 48]], "top_k": 5, "model": "toy"},
           {"image": "img7", "boxes": [[0, 0, 48, 32]], "top_k": 5, "model": "toy"},
           {"image": "img10", "boxes": [[16, 16, 48, 48]], "top_k": 5, "model": "toy"}]


def _mine(ws, capsys, tmp_path, queries=QUERIES):
    """Hits of every query (one `assay mine --queries` run: one set of shard actors)."""
    f = tmp_path / "queries.json"
    f.write_text(json.dumps(queries))
    assert main(["mine", "-w", ws.uri, "--queries", str(f), "--candidates", "8", "--keep-query", "--json"]) == 0
    return [[(h["image_id"], round(h["score"], 5), h["box"]) for h in r["hits"]]
            for r in json.loads(capsys.readouterr().out)]


def test_mine_on_a_sharded_index_selects_what_the_single_index_selects(ray_cluster, workspace, capsys, tmp_path):
    _store(workspace, n=12)
    assert main(["index", "-w", workspace.uri, "--model", "toy", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["shards"] == 0
    single = _mine(workspace, capsys, tmp_path)
    assert main(["index", "-w", workspace.uri, "--model", "toy", "--shards", "3", "--json"]) == 0
    region = json.loads(capsys.readouterr().out)[0]
    assert (region["shards"], region["n"], region["images"]) == (3, 12 * 12, 12)
    assert len(region["shard_vectors"]) == 3 and sum(region["shard_vectors"]) == 12 * 12
    assert workspace.exists("index/toy/shards/manifest.json")
    assert not workspace.exists("index/toy/manifest.json")  # one form at a time: mine can only use the shards
    from actors.selection.sharded_build import indexed_images

    assert indexed_images(workspace, "toy") == {f"img{k}" for k in range(12)}  # read from the shard files
    sharded = _mine(workspace, capsys, tmp_path)
    assert sharded == single and [q[0][0] for q in sharded] == ["img4", "img7", "img10"]
    assert main(["index", "-w", workspace.uri, "--model", "toy", "--shards", "0", "--json"]) == 0  # back to one
    assert json.loads(capsys.readouterr().out)[0]["shards"] == 0 and not workspace.exists("index/toy/shards")
    assert workspace.exists("index/toy/manifest.json")


def test_assay_index_adds_new_images_to_the_shards_incrementally(ray_cluster, workspace, capsys, tmp_path):
    from actors.core.workspace import Workspace

    single_ws = Workspace(tmp_path / "single")  # the same store and steps, kept as one index
    for ws, extra in ((workspace, ["--shards", "2"]), (single_ws, [])):
        _store(ws, n=8)
        assert main(["index", "-w", ws.uri, "--model", "toy", *extra, "--json"]) == 0
        first = json.loads(capsys.readouterr().out)[0]
        assert (first["images"], first["added_images"], first["shards"]) == (8, 8, 2 if extra else 0)
        _more(ws, 8, 5)
        assert main(["index", "-w", ws.uri, "--model", "toy", "--json"]) == 0  # no --shards: keeps its form
        grown = json.loads(capsys.readouterr().out)[0]
        assert (grown["images"], grown["added_images"], grown["n"]) == (13, 5, 13 * 12)
    assert grown["shards"] == 0 and not workspace.exists("index/toy/manifest.json")  # no single index beside
    assert main(["index", "-w", workspace.uri, "--model", "toy", "--json"]) == 0  # nothing new: nothing added
    again = json.loads(capsys.readouterr().out)[0]
    assert (again["shards"], again["added_images"], sum(again["shard_vectors"])) == (2, 0, 13 * 12)
    sharded = _mine(workspace, capsys, tmp_path)
    assert sharded == _mine(single_ws, capsys, tmp_path)  # grown shards select what the grown single index does
    assert sharded[2][0][0] == "img10"  # an image added later is found


def test_export_a_selection_as_manifest_coco_and_fiftyone(saved, tmp_path, capsys):
    """#25 item 4: `assay export SELECTION` writes what other tools read; the query image itself is marked."""
    ws = saved.uri
    assert main(["export", "q1", "-w", ws, "--out", str(tmp_path / "s.csv"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert (res["format"], res["hits"], res["query_marked"]) == ("csv", 3, 1)
    assert main(["export", "q1", "-w", ws, "--out", str(tmp_path / "s.json")]) == 0
    assert "wrote 3 hits as coco" in capsys.readouterr().out
    assert json.loads((tmp_path / "s.json").read_text())["images"][0]["is_query"] is True
    assert main(["export", "q1", "-w", ws, "--out", str(tmp_path / "fo"), "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "FiftyOneImageDetectionDataset" in out and len(json.loads((tmp_path / "fo" / "data.json").read_text())) == 2
    for args, msg in ((["q1", "--out", str(tmp_path / "s.txt")], "cannot tell the format"),
                      (["nope", "--out", str(tmp_path / "s.csv")], "no such selection")):
        assert main(["export", "-w", ws, *args]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1

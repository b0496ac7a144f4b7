"""The workspace on object storage, as a cluster has it: a real S3 API server (moto's standalone server on
127.0.0.1), the images and the workspace in a bucket, ingest -> embed (Ray workers read images and the encoder
through the URI) -> index -> mine, and the same selections as a local workspace over the same images."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.apps.test_jobs import ROOT, make_images, make_query, random_backbone

pytestmark = pytest.mark.slow
moto_server = pytest.importorskip("moto.server")

FLOW = r"""
import json, sys
from apps.jobs import embed_step, index_step, ingest_step, mine_step
from tests.apps.test_jobs import random_backbone
ws, manifest, query, box = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
random_backbone(ws)
ing = ingest_step(ws, manifest, split="pool")
emb = embed_step(ws, backbone="assay-small", shard_size=4, actors=1, batch_size=2, local=False)  # on Ray: workers read s3:// images
idx = index_step(ws, model="assay-small")
sel = mine_step(ws, [{"image": query, "boxes": [box], "top_k": 5, "model": "assay-small"}], run_id="s3run")
print(json.dumps({"ingest": ing, "embed": emb, "index": idx, "mine": sel}))
"""


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def s3(monkeypatch):
    """A moto S3 server on 127.0.0.1 and the environment that points pyarrow.fs (and Ray workers) at it."""
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", access_key="test",
                           secret_key="test", region="us-east-1", allow_bucket_creation=True)
    fs.create_dir("assay")
    yield fs, env
    server.stop()


def _hits_by_name(ws: str, out: dict) -> list[tuple[str, float]]:
    """(image file name, score) per hit, read back from the workspace's selection file: image ids hash the URI,
    so the two workspaces are compared by file name."""
    from actors.catalog.schema import IMAGES
    from actors.core.workspace import Workspace

    w = Workspace(ws)
    cat = w.read_table(IMAGES, columns=["image_id", "uri"]).to_pylist()
    name = {r["image_id"]: r["uri"].rsplit("/", 1)[-1] for r in cat}
    rows = w.read_table(f"selections/{out['selections'][0]['query_id']}.parquet").to_pylist()
    return [(name[r["image_id"]], r["score"]) for r in rows]


def test_ingest_embed_index_mine_with_images_and_workspace_in_s3(tmp_path, s3):
    import pyarrow.parquet as pq

    from apps.jobs import embed_step, index_step, ingest_step, mine_step

    fs, env = s3
    files = make_images(tmp_path / "images", 12)
    q, box = make_query(tmp_path / "q.png")
    for f in [*files, tmp_path / "q.png"]:
        key = f"assay/{'queries' if f.name == 'q.png' else 'images'}/{f.name}"
        with fs.open_output_stream(key) as out:
            out.write(f.read_bytes())
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("uri\n" + "".join(f"s3://assay/images/{f.name}\n" for f in files))

    ws = "s3://assay/ws"
    run_env = dict(os.environ, **env, PYTHONPATH=str(ROOT), RAY_DEDUP_LOGS="0")
    run_env.pop("RAY_ADDRESS", None)
    r = subprocess.run([sys.executable, "-c", FLOW, ws, str(manifest), "s3://assay/queries/q.png", json.dumps(box)],
                       cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=480)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-5000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["ingest"]["added"] == 12 and got["ingest"]["errors"] == 0
    assert got["embed"]["mode"] == "ray" and got["embed"]["n_embedded"] == 12 and got["embed"]["n_errors"] == 0
    assert got["index"]["region"]["images"] == 12
    # everything is in the bucket, nothing on local disk
    names = {i.path.rsplit("/", 1)[-1] for i in fs.get_file_info(pafs_selector("assay/ws"))}
    qid = got["mine"]["selections"][0]["query_id"]
    assert {"images.parquet", "_manifest.json", "manifest.json", f"{qid}.parquet", f"{qid}.s3run.parquet"} <= names
    assert not (ROOT / "s3:").exists()
    with fs.open_input_file(f"assay/ws/selections/{qid}.s3run.parquet") as f:
        assert pq.read_table(f).num_rows == 5

    # the same flow on a local workspace over local copies of the same images
    local = str(tmp_path / "local-ws")
    random_backbone(local)
    ingest_step(local, str(tmp_path / "images"), split="pool")
    embed_step(local, backbone="assay-small", local=True, shard_size=4)
    index_step(local, model="assay-small")
    ref = mine_step(local, [{"image": q, "boxes": [box], "top_k": 5, "model": "assay-small"}])
    assert ref["selections"][0]["query_id"] == qid  # same query bytes, boxes, model
    remote, here = _hits_by_name(ws, got["mine"]), _hits_by_name(local, ref)
    assert [n for n, _ in remote] == [n for n, _ in here] and len(here) == 5
    assert [s for _, s in remote] == pytest.approx([s for _, s in here], abs=1e-3)


def pafs_selector(path: str):
    import pyarrow.fs as pafs

    return pafs.FileSelector(path, recursive=True)


def _upload(fs, key: str, data: bytes) -> str:
    with fs.open_output_stream(key) as out:
        out.write(data)
    return f"s3://{key}"


def test_a_remote_manifests_relative_uris_resolve_against_its_own_folder(tmp_path, s3):
    from actors.catalog.schema import IMAGES
    from actors.core.workspace import Workspace
    from apps.jobs import run_pipeline
    from apps.schedule import Pipeline

    fs, _ = s3
    files = make_images(tmp_path / "images", 3)
    for f in files:
        _upload(fs, f"assay/data/img/{f.name}", f.read_bytes())
    a, b, c = (f.name for f in files)
    rows = [f"img/{a}", f"./img/{b}", f"../data/img/{c}"]  # relative to the manifest's folder
    manifest = _upload(fs, "assay/data/manifest.csv", ("uri\n" + "\n".join(rows) + "\n").encode())
    ws = str(tmp_path / "ws")
    p = Pipeline(name="remote", path=str(tmp_path / "p.toml"), workspace=ws, cron="0 * * * *", steps=("ingest",),
                 source=manifest)
    out = run_pipeline(p, "r1")
    assert out["counts"] == {"ingested": 3, "ingest_errors": 0}  # every header read through S3
    cat = Workspace(ws).read_table(IMAGES).to_pylist()
    assert sorted(r["uri"] for r in cat) == [f"s3://assay/data/img/{f.name}" for f in files]
    assert {r["status"] for r in cat} == {"ok"} and {r["source"] for r in cat} == {manifest}


def test_standing_queries_on_remote_images_with_one_file_name_do_not_collide(tmp_path, s3):
    import numpy as np
    from PIL import Image

    from actors.core.workspace import Workspace
    from actors.selection.mine import Query, query_id
    from apps.jobs import embed_step, index_step, ingest_step, mine_step

    fs, _ = s3
    ws = str(tmp_path / "ws")
    make_images(tmp_path / "images", 12)
    random_backbone(ws)
    ingest_step(ws, str(tmp_path / "images"), split="pool")
    embed_step(ws, backbone="assay-small", local=True, shard_size=4)
    index_step(ws, model="assay-small")
    q1, box = make_query(tmp_path / "a" / "q.png")
    q2 = tmp_path / "b" / "q.png"  # another image, same file name and box
    q2.parent.mkdir()
    Image.fromarray((np.asarray(Image.open(q1)) // 2).astype(np.uint8)).save(q2)
    uris = [_upload(fs, f"assay/{d}/q.png", Path(f).read_bytes()) for d, f in (("q1", q1), ("q2", q2))]
    out = mine_step(ws, [{"image": u, "boxes": [box], "top_k": 3, "model": "assay-small"} for u in uris],
                    run_id="r1")
    want = [query_id(Query(str(f), [tuple(map(float, box))], 3, "assay-small")) for f in (q1, q2)]
    got = [s["query_id"] for s in out["selections"]]
    assert got == want and len(set(got)) == 2  # each query encoded from its own image
    w = Workspace(ws)
    assert [w.read_json(f"queries/{i}.json")["image"] for i in got] == uris  # the remote URI, not a temp copy
    assert all(w.exists(f"selections/{i}.r1.parquet") for i in got)

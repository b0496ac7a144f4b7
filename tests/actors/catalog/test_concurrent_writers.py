"""#24 item 3: concurrent writers of ``catalog/labels.parquet`` (labels import, pseudo-labels, COCO ingest), real
processes started together, keep every writer's rows; ``Workspace.locked`` itself, from processes; a reader while
another process keeps replacing the file reads it whole every time."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pyarrow as pa

from actors.catalog.schema import IMAGES, LABELS, conform_labels, image_id, load_images, load_labels
from actors.core.workspace import Workspace

N = 8  # read-modify-writes per writer


def _id(ws: Workspace, name: str) -> str:
    """The image_id of the catalog image whose file is ``name``."""
    return next(r["image_id"] for r in load_images(ws).to_pylist() if Path(r["uri"]).name == name)


def _import_writer(ws: Workspace, folder: Path) -> None:
    from actors.active.oracle import import_labels

    for k in range(N):  # one new human box on im2 per import
        doc = {"images": [{"id": 1, "file_name": "im2.jpg"}], "categories": [{"id": 1, "name": "circle"}],
               "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [k, k, 5, 5]}]}
        (folder / f"team{k}.json").write_text(json.dumps(doc))
        import_labels(ws, folder / f"team{k}.json")


def _pseudo_writer(ws: Workspace, folder: Path) -> None:
    from actors.active.pseudo import add_pseudo_labels

    for k in range(N):  # one new pseudo box on im3 per call, kept (replace=False)
        preds = {_id(ws, "im3.jpg"): {"boxes": np.array([[k, k, k + 9.0, k + 9.0]]), "scores": np.array([0.9]),
                         "labels": np.array([0])}}
        add_pseudo_labels(ws, preds, ["circle"], "run-p", replace=False)


def _ingest_writer(ws: Workspace, folder: Path) -> None:
    from actors.catalog.ingest import ingest

    for k in range(N):  # one new image with one box per COCO file
        doc = {"images": [{"id": 1, "file_name": f"new{k}.jpg", "width": 100, "height": 80}],
               "categories": [{"id": 1, "name": "star"}],
               "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 5, 5]}]}
        (folder / f"coco{k}.json").write_text(json.dumps(doc))
        ingest(folder / f"coco{k}.json", ws, split="pool", check_headers=False, progress=False)


def _counter_writer(ws: Workspace, folder: Path) -> None:
    for k in range(N):  # the locked helper itself: append one row per read-modify-write
        with ws.locked("counts.parquet"):
            old = ws.read_table("counts.parquet").to_pylist() if ws.exists("counts.parquet") else []
            ws.write_table("counts.parquet", pa.Table.from_pylist(old + [{"writer": folder.name, "k": k}]))


def _replacer(ws: Workspace, folder: Path) -> None:
    for k in range(REPLACES):  # no lock: plain write_table (temp + rename) of a 20,000-row file, two contents
        ws.write_table("big.parquet", pa.Table.from_pylist([{"k": k % 2, "v": i} for i in range(20_000)]))


REPLACES = 60
WRITERS = {"import": _import_writer, "pseudo": _pseudo_writer, "ingest": _ingest_writer, "counter": _counter_writer,
           "replacer": _replacer}


def _run(name: str, root: str, folder: str, start) -> None:
    Path(folder).mkdir(parents=True, exist_ok=True)
    start.wait()  # every writer begins at once
    WRITERS[name](Workspace(root), Path(folder))


def _together(ws: Workspace, tmp_path: Path, names: list[str]) -> None:
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(len(names))
    procs = [ctx.Process(target=_run, args=(n, ws.uri, str(tmp_path / f"w{i}"), start)) for i, n in enumerate(names)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0] * len(names)


def _catalog(ws: Workspace, tmp_path: Path) -> None:
    uris = [str(tmp_path / f"pics/im{i}.jpg") for i in range(4)]
    rows = [{"image_id": image_id(u), "uri": u, "width": 100, "height": 80, "source": "test", "split": "pool",
             "status": "ok", "error": None} for u in uris]
    ws.write_table(IMAGES, pa.Table.from_pylist(rows))
    ws.write_table(LABELS, conform_labels(pa.Table.from_pylist([
        {"image_id": image_id(uris[0]), "box_id": 0, "x0": 1.0, "y0": 2.0, "x1": 20.0, "y1": 30.0, "category": "circle",
         "source": "human", "status": "ok", "error": None}])))


def test_concurrent_label_writers_keep_every_row(workspace, tmp_path):
    _catalog(workspace, tmp_path)
    _together(workspace, tmp_path, ["import", "pseudo", "ingest"])
    rows = load_labels(workspace).to_pylist()
    by = lambda name: [r for r in rows if r["image_id"] == _id(workspace, name)]  # noqa: E731
    assert len(by("im0.jpg")) == 1
    assert sorted(r["x0"] for r in by("im2.jpg")) == list(range(N))  # every import
    assert sorted(r["x0"] for r in by("im3.jpg")) == list(range(N))  # every pseudo-labelling
    assert {r["source"] for r in by("im3.jpg")} == {"pseudo"}
    ingested = [r for r in rows if r["category"] == "star"]
    assert len(ingested) == N and len(rows) == 1 + 3 * N
    assert load_images(workspace, status=None).num_rows == 4 + N  # ingest's catalog rows too


def test_locked_read_modify_writes_from_processes_keep_every_update(workspace, tmp_path):
    _together(workspace, tmp_path, ["counter"] * 3)
    rows = workspace.read_table("counts.parquet").to_pylist()
    assert sorted((r["writer"], r["k"]) for r in rows) == [(f"w{i}", k) for i in range(3) for k in range(N)]
    assert workspace.listdir("") == ["counts.parquet"]  # the lock file is not a workspace file



def test_a_reader_while_another_process_replaces_the_file_reads_it_whole(workspace, tmp_path):
    """Regression: readers opened the path after a stat, and a rename in between failed the read (147 of 5,889)."""
    workspace.write_table("big.parquet", pa.Table.from_pylist([{"k": 1, "v": i} for i in range(20_000)]))
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(2)
    proc = ctx.Process(target=_run, args=("replacer", workspace.uri, str(tmp_path / "w"), start))
    proc.start()
    start.wait()
    reads = 0
    while proc.is_alive() or reads == 0:
        t = workspace.read_table("big.parquet")  # a failed or torn read raises or fails the check below
        assert t.num_rows == 20_000 and len(set(t.column("k").to_pylist())) == 1
        reads += 1
    proc.join()
    assert proc.exitcode == 0 and reads > 1

"""``assay index`` and ``assay mine``: build the FAISS indexes, run targeted-selection queries."""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from actors.catalog.schema import IMAGES, attach_uris, image_id, normalize_uri
from actors.core.errors import UserError
from apps.cli.options import DEFAULT_WORKSPACE, JsonOpt, WorkspaceOpt

# Mirrors actors.selection.mine (kept here so `assay --help` does not import torch; tests check they agree).
DEFAULT_MODEL = "efficientnet-lite0"
METHODS = ("template", "global")
RERANK_TOP = 300  # actors.selection.rerank.RERANK_TOP

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Feature-store name (features/<model>/).")]


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``"x0,y0,x1,y1"`` (pixels) -> a tuple; ``ValueError`` naming the text otherwise."""
    parts = text.replace(" ", "").split(",")
    try:
        box = tuple(float(p) for p in parts)
    except ValueError:
        box = ()
    if len(box) != 4:
        raise UserError(f"--box expects x0,y0,x1,y1 in pixels, got {text!r}")
    return box  # type: ignore[return-value]


def index_cmd(workspace: WorkspaceOpt = DEFAULT_WORKSPACE, model: ModelOpt = DEFAULT_MODEL,
              factory: Annotated[Optional[str], typer.Option(
                  "--factory", help="FAISS factory string (default: Flat below 1M vectors, IVF-PQ above).")] = None,
              rebuild: Annotated[bool, typer.Option("--rebuild", help="Rebuild instead of adding new images.")] = False,
              cell_pool: Annotated[Optional[int], typer.Option(
                  "--cell-pool", help="Region vectors = k×k blocks of stored cells (k² fewer vectors; matching "
                                      "keeps full resolution). Default: blocks of ~32 px (2 on 16-px stores); another k than the index's rebuilds it.")]
              = None,
              shards: Annotated[Optional[int], typer.Option(
                  "--shards", help="Shard the region index over N Ray actors (by image hash; `assay mine` uses them "
                                   "as they are). Default: keep the workspace's form; 0: back to one index; "
                                   "another N than the index's rebuilds it.")] = None,
              as_json: JsonOpt = False) -> None:
    """Index the region vectors of a feature store (and its whole-image baseline); only new images are added."""
    from actors.core.workspace import Workspace
    from apps.cli.output import console, emit, table
    from apps.cli.steps import next_after

    out = run_index(workspace=workspace, model=model, factory=factory, rebuild=rebuild, cell_pool=cell_pool,
                    shards=shards, progress=not as_json)
    ws = Workspace(workspace)
    emit(out, as_json, lambda r: (console.print(table(
        f"index of {model}", ["kind", "factory", "vectors", "images", "dim", "cell pool", "trained on", "shards"],
        [(m["kind"], m["factory"], m["n"], m["images"], m["dim"], m["cell_pool"], m["trained_on"],
          m["shards"] or "-") for m in r])), console.print(next_after("index", ws, model))))


def run_index(*, workspace: str, model: str, factory: str | None, rebuild: bool, cell_pool: int | None,
              shards: int | None, progress: bool) -> list[dict]:
    """What ``assay index`` and the ``index`` job step run (the options of :func:`index_cmd`): the region index's
    manifest (with ``shards``, ``added_images``), then the global one's (with ``shards=0``, ``added_images``)."""
    from actors.core.workspace import Workspace
    from actors.selection.index import add_to_index, build_index, load_manifest
    from actors.selection.sharded_build import index_region
    from apps.cli.steps import missing_before_index

    ws = Workspace(workspace)
    _require(missing_before_index(ws, model))
    out = [index_region(ws, model, shards=shards, factory=factory, rebuild=rebuild, cell_pool=cell_pool,
                        progress=progress)]
    old = load_manifest(ws, model, "global")
    man = (build_index(ws, model, kind="global", progress=progress) if rebuild or old is None
           else add_to_index(ws, model, kind="global", progress=progress))
    out.append(dict(vars(man), shards=0, added_images=man.images - (old.images if old else 0)))
    return out


def mine_cmd(workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
             image: Annotated[Optional[str], typer.Option("--image", help="Query image file (or pool image_id).")] = None,
             box: Annotated[Optional[list[str]], typer.Option(
                 "--box", help="x0,y0,x1,y1 in pixels; repeat for objects that must co-occur.")] = None,
             top_k: Annotated[int, typer.Option("--top-k", "-k", help="How many images to return.")] = 100,
             method: Annotated[str, typer.Option("--method", help=f"One of {', '.join(METHODS)}.")] = "template",
             model: ModelOpt = DEFAULT_MODEL,
             combine: Annotated[str, typer.Option("--combine", help="Multi-object score: min or mean.")] = "min",
             queries: Annotated[Optional[str], typer.Option(
                 "--queries", help="JSON file with a list of queries, run as one job.")] = None,
             workers: Annotated[int, typer.Option("--workers", help="Ray match actors for --queries (0: in-process).")] = 0,
             candidates: Annotated[Optional[int], typer.Option(
                 "--candidates", help="Coarse-stage candidates re-ranked by the fine stage (default max(10·K, 200); "
                                      "fewer is faster, see docs/benchmarks.md).")] = None,
             keep_query: Annotated[bool, typer.Option(
                 "--keep-query", help="Keep the query image among the hits when it is a pool image itself (left "
                                      "out by default: it would be the best hit).")] = False,
             rerank: Annotated[int, typer.Option(
                 "--rerank", help="Best dense hits re-scored at the object's own scale (0: off; scores are then "
                                  "the dense stage's).")] = RERANK_TOP,
             negative_box: Annotated[Optional[list[str]], typer.Option(
                 "--negative-box", help="x0,y0,x1,y1 of a 'not this' object in the query image; repeatable.")] = None,
             more_like: Annotated[Optional[str], typer.Option(
                 "--more-like", help="A saved selection's query id: find more like its hits --ids.")] = None,
             ids: Annotated[Optional[str], typer.Option(
                 "--ids", help="With --more-like: comma-separated image_ids of its hits.")] = None,
             as_json: JsonOpt = False) -> None:
    """Find the pool images holding an object like the boxed one(s) in the query image, ranked and localized."""
    from apps.cli.output import emit

    result = run_mine(workspace=workspace, image=image, box=box, top_k=top_k, method=method, model=model,
                      combine=combine, queries=queries, workers=workers, candidates=candidates, keep_query=keep_query,
                      rerank=rerank, negative_box=negative_box, more_like=more_like, ids=ids)
    emit(result, as_json, lambda r: _render(r if isinstance(r, list) else [r]))


def run_mine(*, workspace: str, image: str | None, box: list[str] | None, top_k: int, method: str, model: str,
             combine: str, queries: str | None, workers: int, candidates: int | None, keep_query: bool, rerank: int,
             negative_box: list[str] | None, more_like: str | None, ids: str | None) -> dict | list[dict]:
    """What ``assay mine`` and the ``mine`` job step run (the options of :func:`mine_cmd`): one result dict (a
    list of them with ``queries``); writes ``selections/<query_id>.parquet`` and ``queries/<query_id>.json``."""
    from actors.selection.mine import Query, load_queries
    from actors.core.workspace import Workspace
    from apps.cli.steps import missing_before_mine

    ws = Workspace(workspace)
    if rerank < 0:
        raise UserError(f"--rerank must be >= 0, got {rerank}")
    if more_like:
        _require(missing_before_mine(ws, [(model, "template")]))
        return _more_like(ws, more_like, ids, top_k=top_k, model=model, rerank=rerank)
    if queries:
        qs = load_queries(queries)
    elif image:
        qs = [Query(image, [parse_box(b) for b in box or []], top_k, model, method, combine, rerank=rerank,
                    negatives=[parse_box(b) for b in negative_box or []])]
    else:
        raise UserError("give --image (with --box) or --queries FILE.json")
    if candidates is not None and candidates < 1:
        raise UserError(f"--candidates must be >= 1, got {candidates}")
    for n, q in enumerate(qs):
        _check_image_file(q.image, f"{queries}: query {n}: image" if queries else "--image")
    _require(missing_before_mine(ws, [(q.model, q.method) for q in qs]))
    sels, left_out = _mine(ws, qs, keep_query=keep_query, workers=workers, n_candidates=candidates)
    uris = _uris(ws)
    result = [_result(s, uris, gone) for s, gone in zip(sels, left_out)]
    return result if queries else result[0]


def _result(s, uris: dict[str, str], gone: str | None = None) -> dict:
    return {"query_id": s.query_id, "query": s.query, "n_candidates": s.n_candidates,
            "seconds": {"coarse": s.coarse_s, "fine": s.fine_s, "rerank": s.rerank_s}, "reranked": s.reranked,
            "query_image_left_out": gone,
            "hits": [{"rank": r + 1, "image_id": h.image_id, "uri": uris.get(h.image_id, ""), "score": h.score,
                      "box": list(h.box)} for r, h in enumerate(s.hits)]}


def _more_like(ws, selection: str, ids: str | None, *, top_k: int, model: str, rerank: int) -> dict:
    from actors.selection.mine import more_like

    chosen = [i.strip() for i in (ids or "").split(",") if i.strip()]
    return _result(more_like(ws, selection, chosen, top_k=top_k, model=model, rerank=rerank), _uris(ws))


def show_cmd(selection: Annotated[str, typer.Argument(help="A selection's query id (selections/<id>.parquet).")],
             workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
             top: Annotated[int, typer.Option("--top", help="Hits on the sheet.")] = 24,
             out: Annotated[Optional[str], typer.Option(
                 "--out", help="PNG path (default selections/<id>.png in the workspace).")] = None,
             as_json: JsonOpt = False) -> None:
    """Write a contact sheet of a selection: the query with its boxes, then the hits with their matched boxes."""
    from actors.core.images import load_image
    from actors.core.workspace import Workspace
    from actors.selection.match import Hit
    from actors.selection.sheet import contact_sheet
    from apps.cli.output import console, emit

    ws = Workspace(workspace)
    rel = f"selections/{selection}.parquet"
    if not ws.exists(rel):
        raise UserError(f"{ws.path(rel)}: no such selection (the query id assay mine printed)")
    rows = ws.read_table(rel).to_pylist()[:top]
    query = ws.read_json(f"queries/{selection}.json") if ws.exists(f"queries/{selection}.json") else {}
    uris = _uris(ws)
    q_uri = uris.get(query.get("image", ""), query.get("image", ""))
    q_img = load_image(q_uri) if q_uri and (os.path.exists(q_uri) or "://" in q_uri) else None
    hits = [Hit(r["image_id"], float(r["score"]), (r["x0"], r["y0"], r["x1"], r["y1"])) for r in rows]
    path = contact_sheet(q_img, query.get("boxes", []), hits, lambda i: load_image(uris[i]),
                         out or ws.local_path(f"selections/{selection}.png"))
    emit({"sheet": str(path), "hits": len(hits)}, as_json,
         lambda r: console.print(f"wrote {r['sheet']} ({r['hits']} hits; the query first, boxes drawn)"))


def export_cmd(selection: Annotated[str, typer.Argument(help="A selection's query id (selections/<id>.parquet).")],
               out: Annotated[str, typer.Option(
                   "--out", "-o", help="Where to write: a .csv or .parquet manifest, a .json COCO file, or a folder "
                                       "(FiftyOne's image detection layout: data.json + labels.json).")],
               workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
               fmt: Annotated[Optional[str], typer.Option(
                   "--format", help="csv | parquet | coco | fiftyone (default: from --out's suffix).")] = None,
               top: Annotated[Optional[int], typer.Option("--top", help="Only the first N hits.")] = None,
               as_json: JsonOpt = False) -> None:
    """Export a selection's hits (uri, matched box, score; the query image marked when it is a hit) as a manifest,
    COCO JSON or a FiftyOne dataset folder."""
    from actors.core.workspace import Workspace
    from actors.selection.export import export_selection
    from apps.cli.output import console, emit

    res = export_selection(Workspace(workspace), selection, out, fmt, top)
    hint = {"fiftyone": f"; import: fo.Dataset.from_dir(dataset_dir={out!r}, "
                        "dataset_type=fo.types.FiftyOneImageDetectionDataset)"}.get(res["format"], "")
    emit(res, as_json, lambda r: console.print(
        f"wrote {r['hits']} hits as {r['format']} to {r['out']}"
        + (f" ({r['query_marked']} is the query image itself, marked is_query)" if r["query_marked"] else "")
        + hint))


def _require(err: UserError | None) -> None:
    if err is not None:
        raise err


def _check_image_file(path: str, what: str) -> None:
    """A query image given as a file must be one (a name that is no file is a pool image_id: mine checks it)."""
    from actors.catalog.ingest import check_image

    if os.path.isfile(path):
        status, reason = check_image(path)[2:]
        if status == "error":
            raise UserError(f"{what} {path}: {reason}")


def _query_image_id(image: str) -> str:
    """The image_id the query's own image has in the catalog/store: the id given, or the id of the file's URI."""
    return image_id(normalize_uri(image)) if os.path.isfile(image) else image


def _mine(ws, qs: list, *, keep_query: bool, workers: int, n_candidates: int | None) -> tuple[list, list]:
    """Run the queries and write their selections (``uri`` joined from the catalog). Unless ``keep_query``, the
    query image itself never counts as a hit: one more is asked for, the query's own image_id dropped, the list cut
    back to ``top_k``. Returns the selections and, per query, the image_id left out (None when none was)."""
    from dataclasses import replace

    from actors.selection.mine import mine_batch

    asked = qs if keep_query else [replace(q, top_k=q.top_k + 1) for q in qs]
    sels = mine_batch(ws, asked, workers=workers, n_candidates=n_candidates, write=False)
    left_out = [None if keep_query else _drop_query_image(s, q) for s, q in zip(sels, qs)]
    for s in sels:
        ws.write_table(f"selections/{s.query_id}.parquet", attach_uris(ws, s.table()))
        ws.write_json(f"queries/{s.query_id}.json", s.query)
    return sels, left_out


def _drop_query_image(sel, q) -> str | None:
    """Drop ``q``'s own image from ``sel``'s hits and keep ``q.top_k`` of them; the id dropped, or None."""
    own = _query_image_id(q.image)
    kept = [h for h in sel.hits if h.image_id != own]
    gone = own if len(kept) < len(sel.hits) else None
    sel.hits, sel.query["k"] = kept[: q.top_k], q.top_k
    return gone


def _uris(ws) -> dict[str, str]:
    if not ws.exists(IMAGES):
        return {}
    t = ws.read_table(IMAGES, columns=["image_id", "uri"])
    return dict(zip(t.column("image_id").to_pylist(), t.column("uri").to_pylist()))


def _render(results: list[dict]) -> None:
    from apps.cli.output import console, table

    for r in results:
        rows = [(h["rank"], h["image_id"], h["uri"], round(h["score"], 4),
                 ",".join(f"{v:.0f}" for v in h["box"])) for h in r["hits"]]
        title = (f"query {r['query_id']} ({r['query']['method']}, {r['query']['model']}): "
                 f"selections/{r['query_id']}.parquet")
        console.print(table(title, ["rank", "image_id", "uri", "score", "box x0,y0,x1,y1"], rows))
        if r.get("query_image_left_out"):
            console.print(f"the query image itself ({r['query_image_left_out']}) is left out of the hits; "
                          "--keep-query keeps it")


def register(app: typer.Typer) -> None:
    app.command("index")(index_cmd)
    app.command("mine")(mine_cmd)
    app.command("show")(show_cmd)
    app.command("export")(export_cmd)

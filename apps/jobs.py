"""Ray job entrypoints: ``python -m apps.jobs STEP …`` runs one Assay step, exactly what the CLI runs.

``ray job submit`` (through ``assay submit``) and the pipeline scheduler start these commands on a cluster; each
step calls the same library function as its ``assay`` command:

=========  =========================================================================================
step       library call
=========  =========================================================================================
ingest     :func:`actors.catalog.ingest.ingest`
embed      :func:`actors.features.embed.embed_pool` (Ray Data actor pool; finished shards are skipped)
index      :func:`actors.selection.index.build_index` / :func:`~actors.selection.index.add_to_index`
mine       :func:`actors.selection.mine.mine_batch`
learn      ``assay learn … --json`` (:mod:`apps.cli.learn`: active-learning rounds of detector retraining)
compress   ``assay compress … --json`` (:mod:`apps.cli.compress`: pruning, int8, export)
pipeline   the steps of a pipeline spec (``platform/pipelines/*.toml``), incrementally, for one run id
=========  =========================================================================================

Contract
--------
* Exit code 0 on success; 2 with a one-line ``error: …`` on stderr for a user error (bad input, missing workspace
  state: :class:`actors.core.errors.UserError`, :class:`estimators.errors.EstimatorInputError`); 1 with a
  traceback for anything else (a bug). ``ASSAY_DEBUG=1`` shows the traceback of user errors too.
* The last line on stdout is one JSON object saying what the step wrote (paths are workspace-relative).
* With ``--run-id R`` the ``mine`` step also writes ``selections/<query_id>.R.parquet`` next to the latest
  ``selections/<query_id>.parquet``, so a standing query's earlier results are kept, one file per run.
* A query image or a source manifest on object storage (``s3://…``) is fetched to a local file first: each query
  image into a folder of its own (two images with one file name never overwrite each other, so their query ids
  differ), and ``queries/<query_id>.json`` names the remote URI; a manifest's relative URIs resolve against the
  manifest's own folder on object storage (:func:`actors.catalog.ingest.ingest`'s ``origin``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import traceback
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Callable, Sequence

from actors.core.errors import UserError
from estimators.errors import EstimatorInputError

if TYPE_CHECKING:
    from apps.schedule import Pipeline

STEPS = ("ingest", "embed", "index", "mine", "pipeline")
# mirrors actors.features.embed.DEFAULT_BACKBONE and actors.selection.mine.DEFAULT_MODEL (literal here so a step's
# --help imports no torch; tests/apps/test_jobs.py checks they agree)
DEFAULT_BACKBONE = "efficientnet-lite0"
DEFAULT_MODEL = "efficientnet-lite0"
OPTIONAL_STEPS = {"learn": "apps.cli.learn", "compress": "apps.cli.compress"}  # run through their `assay` command
# the CLI's user errors (apps/cli/main.py): Assay's own types; anything else is a bug and shows its traceback
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, EstimatorInputError)


# ------------------------------------------------------------------------------------------------ steps
def ingest_step(workspace: str, source: str, *, split: str | None = None, check_headers: bool = True,
                origin: str | None = None) -> dict:
    """Add ``source`` (folder, Parquet/CSV manifest, COCO JSON) to the catalog; returns the ingest report.
    ``origin``: the URI that ``source`` is a local copy of (see :func:`actors.catalog.ingest.ingest`)."""
    from actors.catalog.ingest import ingest
    from actors.catalog.schema import IMAGES, LABELS

    rep = asdict(ingest(source, workspace, split=split, check_headers=check_headers, progress=False, origin=origin))
    rep.pop("failures", None)
    return {"step": "ingest", "workspace": workspace, "wrote": [IMAGES, LABELS], **rep}


def embed_step(workspace: str, *, backbone: str = DEFAULT_BACKBONE, name: str | None = None,
               splits: Sequence[str] | None = ("pool",), actors: int | None = None, batch_size: int | None = None,
               num_gpus: float | None = None, shard_size: int = 256, local: bool = False) -> dict:
    """Embed the catalog images not embedded yet into ``features/<name>/`` (finished shards are skipped)."""
    from actors.core.runtime import Resources
    from actors.features.embed import embed_pool

    res = Resources.auto(pool_size=actors, num_gpus=num_gpus, batch_size=batch_size)
    rep = asdict(embed_pool(workspace, model=backbone, name=name, splits=splits, resources=res,
                            shard_size=shard_size, progress=False, local=local))
    return {"step": "embed", "workspace": workspace, "wrote": [f"features/{rep['model']}"], **rep}


def index_step(workspace: str, *, model: str = DEFAULT_MODEL, factory: str | None = None,
               rebuild: bool = False) -> dict:
    """Grow the region and global indexes of ``model`` by the images not indexed yet (build when none exists)."""
    from actors.core.workspace import Workspace
    from actors.selection.index import add_to_index, build_index, index_dir, load_manifest
    from actors.selection.sharded_build import index_region

    ws = Workspace(workspace)
    r = index_region(ws, model, factory=factory, rebuild=rebuild, progress=False)  # sharded when the workspace is
    out = {"region": {"path": index_dir(model) + ("/shards" if r["shards"] else ""), "images": r["images"],
                      "added_images": r["added_images"], "vectors": r["n"], "factory": r["factory"],
                      "shards": r["shards"], "generation": (load_manifest(ws, model).generation
                                                            if not r["shards"] else None)}}
    old = load_manifest(ws, model, "global")
    before = old.images if old else 0
    man = (build_index(ws, model, kind="global", progress=False) if rebuild or old is None
           else add_to_index(ws, model, kind="global", progress=False))
    out["global"] = {"path": index_dir(model, "global"), "images": man.images, "added_images": man.images - before,
                     "vectors": man.n, "factory": man.factory, "generation": man.generation}
    return {"step": "index", "workspace": workspace, "wrote": [v["path"] for v in out.values()], **out}


def mine_step(workspace: str, queries: Sequence[dict], *, run_id: str | None = None, workers: int = 0,
              candidates: int | None = None) -> dict:
    """Run standing/ad-hoc queries (dicts as in :func:`actors.selection.mine.load_queries`); writes
    ``selections/<query_id>.parquet`` (and ``selections/<query_id>.<run_id>.parquet`` with a run id)."""
    from actors.core.workspace import Workspace
    from actors.catalog.schema import attach_uris
    from actors.selection.mine import Query, mine_batch

    ws = Workspace(workspace)
    if not queries:
        raise UserError("mine: no queries (give --image with --box, or --queries FILE.json)")
    with tempfile.TemporaryDirectory(prefix="assay-query-") as tmp:
        qs = [Query(**_local_query(dict(q), os.path.join(tmp, str(n)))) for n, q in enumerate(queries)]
        sels = mine_batch(ws, qs, workers=workers, n_candidates=candidates)
    wrote, out = [], []
    for q, s in zip(queries, sels):
        _record_remote_image(ws, q, s)
        rel = f"selections/{s.query_id}.parquet"
        wrote.append(rel)
        if run_id:
            rel = f"selections/{s.query_id}.{_safe(run_id)}.parquet"
            ws.write_table(rel, attach_uris(ws, s.table()))
            wrote.append(rel)
        out.append({"query_id": s.query_id, "name": q.get("name", s.query_id), "hits": len(s.hits), "path": rel,
                    "image_ids": [h.image_id for h in s.hits]})
    return {"step": "mine", "workspace": workspace, "run_id": run_id, "wrote": wrote, "selections": out}


def _local_query(q: dict, folder: str) -> dict:
    """A query whose image is a pyarrow.fs URI (s3://…) gets a local copy in ``folder`` (one folder per query: two
    remote images with one file name must not overwrite each other): the query encoder reads files."""
    q.pop("name", None)
    q["boxes"] = [tuple(map(float, b)) for b in q.get("boxes", [])]
    image = str(q.get("image", ""))
    if _is_remote(image):
        os.makedirs(folder, exist_ok=True)
        q["image"] = _fetch(image, folder)
    return q


def _is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def _fetch(uri: str, folder: str) -> str:
    """Copy the file at pyarrow.fs ``uri`` into ``folder`` under its own name; returns the local path."""
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    local = os.path.join(folder, os.path.basename(path))
    with fs.open_input_stream(path) as src, open(local, "wb") as dst:
        dst.write(src.read())
    return local


def _record_remote_image(ws: Any, q: dict, sel: Any) -> None:
    """``queries/<query_id>.json`` names the remote image, not the deleted local copy the query was encoded from."""
    image = str(q.get("image", ""))
    if _is_remote(image):
        sel.query = {**sel.query, "image": image}
        ws.write_json(f"queries/{sel.query_id}.json", sel.query)


def _safe(run_id: str) -> str:
    bad = set(run_id) - set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
    if bad or not run_id:
        raise UserError(f"--run-id {run_id!r}: use letters, digits, '-' and '_' only")
    return run_id


def pipeline_step(spec: str, *, run_id: str, scheduled_at: str | None = None) -> dict:
    """Run the steps of the pipeline ``spec`` once, incrementally, as run ``run_id`` (see :mod:`apps.schedule`)."""
    from apps.schedule import load_pipeline

    return {"step": "pipeline", **run_pipeline(load_pipeline(spec), run_id, scheduled_at=scheduled_at)}


def run_pipeline(p: "Pipeline", run_id: str, *, scheduled_at: str | None = None) -> dict:
    """Run the spec's steps once, incrementally: new images ingested and embedded, the index grown by addition,
    standing queries re-run with their selections written per run id. Returns what was done, with ``counts``."""
    out: dict[str, Any] = {"pipeline": p.name, "run_id": run_id, "scheduled_at": scheduled_at,
                           "workspace": p.workspace}
    counts: dict[str, int] = {}
    model = p.index.get("model") or p.embed.get("name") or p.embed.get("backbone", DEFAULT_BACKBONE)
    if "ingest" in p.steps:
        r = _ingest_remote_aware(p)
        counts.update(ingested=r["added"], ingest_errors=r["errors"])
    if "embed" in p.steps:
        r = embed_step(p.workspace, **p.embed)
        counts.update(embedded=r["n_embedded"], embed_errors=r["n_errors"], shards_written=r["shards_written"])
    if "index" in p.steps:
        r = index_step(p.workspace, model=model, factory=p.index.get("factory"))
        counts.update(indexed=r["region"]["added_images"], index_images=r["region"]["images"])
    if "mine" in p.steps:
        qs = [dict({"model": model}, **q) for q in p.queries]
        r = mine_step(p.workspace, qs, run_id=run_id)
        out["selections"] = r["selections"]
        counts.update(queries=len(r["selections"]), hits=sum(s["hits"] for s in r["selections"]))
    out["counts"] = counts
    return out


def _ingest_remote_aware(p: "Pipeline") -> dict:
    """Ingest ``p.source``; a manifest on object storage is copied locally first, its relative URIs resolved
    against its own folder there (not the local copy's) and the catalog naming it as the source."""
    src = p.source or ""
    if not _is_remote(src):
        return ingest_step(p.workspace, src, split=p.split, check_headers=p.check_headers)
    with tempfile.TemporaryDirectory(prefix="assay-src-") as tmp:
        return ingest_step(p.workspace, _fetch(src, tmp), split=p.split, check_headers=p.check_headers, origin=src)


# ------------------------------------------------------------------------------------------------ command line
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m apps.jobs", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="step", required=True)
    ws_help = "workspace directory or pyarrow.fs URI (env ASSAY_WORKSPACE)"

    def step(name: str, help: str) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help)
        if name not in ("pipeline", *OPTIONAL_STEPS):
            s.add_argument("-w", "--workspace", default=os.environ.get("ASSAY_WORKSPACE", "./assay-workspace"),
                           help=ws_help)
        return s

    s = step("ingest", "add a folder / manifest / COCO JSON to the catalog")
    s.add_argument("source")
    s.add_argument("--split")
    s.add_argument("--no-check-headers", dest="check_headers", action="store_false")
    s = step("embed", "embed catalog images not embedded yet")
    s.add_argument("--backbone", "-b", default=DEFAULT_BACKBONE)
    s.add_argument("--name")
    s.add_argument("--split", action="append", help="catalog split (repeat; 'all' = every readable image)")
    s.add_argument("--actors", type=int)
    s.add_argument("--batch-size", type=int)
    s.add_argument("--num-gpus", type=float)
    s.add_argument("--shard-size", type=int, default=256)
    s.add_argument("--local", action="store_true", help="in-process, without Ray")
    s = step("index", "grow (or build) the FAISS indexes")
    s.add_argument("--model", "-m", default=DEFAULT_MODEL)
    s.add_argument("--factory")
    s.add_argument("--rebuild", action="store_true")
    s = step("mine", "targeted selection for one query or a JSON list of queries")
    s.add_argument("--image")
    s.add_argument("--box", action="append", default=[], help="x0,y0,x1,y1 in pixels (repeat)")
    s.add_argument("--queries", help="JSON file: a list of queries")
    s.add_argument("--top-k", "-k", type=int, default=100)
    s.add_argument("--model", "-m", default=DEFAULT_MODEL)
    s.add_argument("--method", default="template")
    s.add_argument("--workers", type=int, default=0, help="Ray match actors (0: in-process)")
    s.add_argument("--candidates", type=int)
    s.add_argument("--run-id")
    s = step("pipeline", "run a pipeline spec's steps once")
    s.add_argument("spec", help="pipeline TOML (platform/pipelines/*.toml)")
    s.add_argument("--run-id", required=True)
    s.add_argument("--scheduled-at", help="ISO time of the window this run serves (recorded in its report)")
    for name, module in OPTIONAL_STEPS.items():
        if _importable(module):
            step(name, f"`assay {name} …` as a job (every option passes through)")
    return p


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _run(a: argparse.Namespace) -> dict:
    if a.step == "ingest":
        return ingest_step(a.workspace, a.source, split=a.split, check_headers=a.check_headers)
    if a.step == "embed":
        splits = None if a.split and "all" in a.split else tuple(a.split or ("pool",))
        return embed_step(a.workspace, backbone=a.backbone, name=a.name, splits=splits, actors=a.actors,
                          batch_size=a.batch_size, num_gpus=a.num_gpus, shard_size=a.shard_size, local=a.local)
    if a.step == "index":
        return index_step(a.workspace, model=a.model, factory=a.factory, rebuild=a.rebuild)
    if a.step == "mine":
        return mine_step(a.workspace, _queries(a), run_id=a.run_id, workers=a.workers, candidates=a.candidates)
    if a.step == "pipeline":
        return pipeline_step(a.spec, run_id=a.run_id, scheduled_at=a.scheduled_at)
    return _optional(a.step, a.args)


def _queries(a: argparse.Namespace) -> list[dict]:
    from apps.cli.select import parse_box

    if a.queries:
        try:
            items = json.loads(open(a.queries).read())
        except json.JSONDecodeError as e:
            raise UserError(f"{a.queries}: not valid JSON ({e})") from None
        if not isinstance(items, list):
            raise UserError(f"{a.queries}: expected a JSON list of queries")
        return items
    if not a.image:
        raise UserError("mine: give --image (with --box) or --queries FILE.json")
    return [{"image": a.image, "boxes": [parse_box(b) for b in a.box], "top_k": a.top_k, "model": a.model,
             "method": a.method}]


def _optional(step: str, args: list[str]) -> dict:
    """A step that lives in another command module: run its `assay` command with --json, return its JSON."""
    import contextlib
    import io

    from apps.cli.main import main as assay

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = assay([step, *args, "--json"])
    sys.stdout.write(buf.getvalue())
    if code:
        raise _StepExit(code)  # the command already printed its one-line error or traceback
    return {"step": step, "result": _json_tail(buf.getvalue())}


class _StepExit(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _json_tail(text: str) -> Any:
    """The JSON document that ends ``text`` (a command's --json output after any other lines), else None."""
    lines = text.rstrip().splitlines()
    for i, line in enumerate(lines):
        if line.startswith(("{", "[")):
            try:
                return json.loads("\n".join(lines[i:]))
            except json.JSONDecodeError:
                continue
    return None


def main(argv: Sequence[str] | None = None, run: Callable[[argparse.Namespace], dict] = _run) -> int:
    """Parse, run one step, print its JSON as the last stdout line; returns the exit code (see module doc)."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if args.step in OPTIONAL_STEPS:
        args.args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        result = run(args)
    except _StepExit as e:
        return e.code
    except USER_ERRORS as e:
        if os.environ.get("ASSAY_DEBUG"):
            traceback.print_exc()
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except Exception:  # a bug: the traceback goes to the job log
        traceback.print_exc()
        return 1
    sys.stdout.flush()
    print(json.dumps(_plain(result), sort_keys=True), flush=True)
    return 0


def _plain(o: Any) -> Any:
    """JSON-safe copy: NaN/inf -> null, numpy scalars -> Python, datetimes -> ISO text."""
    import math

    if isinstance(o, dict):
        return {str(k): _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_plain(v) for v in o]
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if o is None or isinstance(o, (str, int, bool)):
        return o
    if hasattr(o, "item"):
        return _plain(o.item())
    if hasattr(o, "isoformat"):
        return o.isoformat()
    return str(o)


if __name__ == "__main__":
    sys.exit(main())

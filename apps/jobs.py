"""Ray job entrypoints: ``python -m apps.jobs STEP …`` runs one Assay step, exactly what the CLI runs.

``ray job submit`` (through ``assay submit``) and the pipeline scheduler start these commands on a cluster. A core
step *is* its ``assay`` command: its options are derived from the command's signature (:mod:`apps.cli.argspec`:
one option spec), and it calls the function the command calls, with the same values:

=========  =========================================================================================
step       function (the one its ``assay`` command calls)
=========  =========================================================================================
ingest     :func:`apps.cli.data.run_ingest` (:func:`actors.catalog.ingest.ingest`)
embed      :func:`apps.cli.embed.run_embed` (:func:`actors.features.embed.embed_pool`; finished shards skipped)
index      :func:`apps.cli.select.run_index` (region index, single or sharded, and the global one)
mine       :func:`apps.cli.select.run_mine` (:func:`actors.selection.mine.mine_batch`); job only: ``--run-id``
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
# A core step is its `assay` command: (module, Typer command function, function both call). The job parser is derived
# from the command's signature (apps.cli.argspec), so a step takes every option of its command, and the job calls the
# same function with the same values (then reports what it wrote in the job's JSON form).
CLI_STEPS = {"ingest": ("apps.cli.data", "ingest", "run_ingest"),
             "embed": ("apps.cli.embed", "embed_cmd", "run_embed"),
             "index": ("apps.cli.select", "index_cmd", "run_index"),
             "mine": ("apps.cli.select", "mine_cmd", "run_mine")}
JOB_ONLY = {"mine": ("run_id",)}  # options a job has beyond its command's (argparse dests)


def cli_functions(step: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """(the Typer command function, the function it calls) of core step ``step``, looked up when called."""
    import importlib

    module, command, run = CLI_STEPS[step]
    mod = importlib.import_module(module)
    return getattr(mod, command), getattr(mod, run)


def _call(step: str, values: dict) -> Any:
    """Call step ``step``'s command function with ``values`` (the command's defaults for the options not given),
    as the command does with ``--json`` (no progress bars)."""
    from apps.cli.argspec import defaults

    command, run = cli_functions(step)
    kw = {k: v for k, v in {**defaults(command), **values}.items() if k != "as_json"}
    return run(**kw, progress=False) if step != "mine" else run(**kw)


def ingest_step(workspace: str, source: str, *, split: str | None = None, check_headers: bool = True,
                origin: str | None = None, recheck: bool = False) -> dict:
    """Add ``source`` (folder, Parquet/CSV manifest, COCO JSON) to the catalog, as ``assay ingest`` does; returns
    the ingest report. ``origin``: the URI that ``source`` is a local copy of (see
    :func:`actors.catalog.ingest.ingest`)."""
    return _ingest_report(workspace, _call("ingest", dict(workspace=workspace, source=source, split=split,
                                                          check_headers=check_headers, recheck=recheck,
                                                          origin=origin)))


def _ingest_report(workspace: str, out: dict) -> dict:
    from actors.catalog.schema import IMAGES, LABELS

    rep = dict(out.get("ingest") or {}, **({"recheck": out["recheck"]} if "recheck" in out else {}))
    rep.pop("failures", None)
    return {"step": "ingest", "workspace": workspace, "wrote": [IMAGES, LABELS], **rep}


def embed_step(workspace: str, *, backbone: str = DEFAULT_BACKBONE, name: str | None = None,
               splits: Sequence[str] | None = ("pool",), actors: int | None = None, batch_size: int | None = None,
               num_gpus: float | None = None, shard_size: int = 256, local: bool | None = None, **options: Any) -> dict:
    """Embed the catalog images not embedded yet into ``features/<name>/``, as ``assay embed`` does (finished shards
    are skipped); ``splits=None``: every readable image. ``options``: any other option of ``assay embed``."""
    split = ["all"] if splits is None else list(splits)
    return _embed_report(workspace, _call("embed", dict(
        workspace=workspace, backbone=backbone, name=name, split=split, actors=actors, batch_size=batch_size,
        num_gpus=num_gpus, shard_size=shard_size, local=local, **options)))


def _embed_report(workspace: str, rep: dict) -> dict:
    return {"step": "embed", "workspace": workspace, "wrote": [f"features/{rep['model']}"], **rep}


def index_step(workspace: str, *, model: str = DEFAULT_MODEL, factory: str | None = None,
               rebuild: bool = False, **options: Any) -> dict:
    """Grow the region and global indexes of ``model`` by the images not indexed yet (build when none exists), as
    ``assay index`` does. ``options``: any other option of ``assay index`` (``shards``, ``cell_pool``)."""
    return _index_report(workspace, model, _call("index", dict(workspace=workspace, model=model, factory=factory,
                                                               rebuild=rebuild, **options)))


def _index_report(workspace: str, model: str, mans: list[dict]) -> dict:
    from actors.selection.index import index_dir

    region, glob = mans
    out = {"region": {"path": index_dir(model) + ("/shards" if region["shards"] else ""),
                      "images": region["images"], "added_images": region["added_images"], "vectors": region["n"],
                      "factory": region["factory"], "shards": region["shards"],
                      "generation": region.get("generation") if not region["shards"] else None},
           "global": {"path": index_dir(model, "global"), "images": glob["images"],
                      "added_images": glob["added_images"], "vectors": glob["n"], "factory": glob["factory"],
                      "generation": glob["generation"]}}
    return {"step": "index", "workspace": workspace, "wrote": [v["path"] for v in out.values()], **out}


def mine_step(workspace: str, queries: Sequence[dict], *, run_id: str | None = None, workers: int = 0,
              candidates: int | None = None, keep_query: bool = False) -> dict:
    """Run standing/ad-hoc queries (dicts as in :func:`actors.selection.mine.load_queries`, plus an optional
    ``name``) as ``assay mine --queries`` does; writes ``selections/<query_id>.parquet`` (and
    ``selections/<query_id>.<run_id>.parquet`` with a run id)."""
    if not queries:
        raise UserError("mine: no queries (give --image with --box, or --queries FILE.json)")
    with tempfile.TemporaryDirectory(prefix="assay-query-") as tmp:
        local = [_local_query(dict(q), os.path.join(tmp, str(n))) for n, q in enumerate(queries)]
        path = os.path.join(tmp, "queries.json")
        with open(path, "w") as f:
            json.dump(local, f)
        results = _call("mine", dict(workspace=workspace, queries=path, workers=workers, candidates=candidates,
                                     keep_query=keep_query))
    return _mine_report(workspace, list(queries), results, run_id)


def _mine_report(workspace: str, queries: list[dict], results: list[dict], run_id: str | None) -> dict:
    """The job's JSON of a mine: per query its id, name, hit count and the files written (a copy per run id);
    a remote query image is what ``queries/<query_id>.json`` names (not the local copy it was encoded from)."""
    from actors.catalog.schema import attach_uris
    from actors.core.workspace import Workspace

    ws = Workspace(workspace)
    wrote, out = [], []
    for q, r in zip(queries or [{}] * len(results), results):  # no queries given: --more-like's one result
        _record_remote_image(ws, q, r["query_id"])
        rel = f"selections/{r['query_id']}.parquet"
        wrote.append(rel)
        if run_id:
            run_rel = f"selections/{r['query_id']}.{_safe(run_id)}.parquet"
            ws.write_table(run_rel, attach_uris(ws, ws.read_table(rel)))
            wrote.append(run_rel)
            rel = run_rel
        out.append({"query_id": r["query_id"], "name": q.get("name", r["query_id"]), "hits": len(r["hits"]),
                    "path": rel, "image_ids": [h["image_id"] for h in r["hits"]]})
    return {"step": "mine", "workspace": workspace, "run_id": run_id, "wrote": wrote, "selections": out}


def _local_query(q: dict, folder: str) -> dict:
    """A query whose image is a pyarrow.fs URI (s3://…) gets a local copy in ``folder`` (one folder per query: two
    remote images with one file name must not overwrite each other): the query encoder reads files."""
    q.pop("name", None)
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


def _record_remote_image(ws: Any, q: dict, query_id: str) -> None:
    """``queries/<query_id>.json`` names the remote image, not the deleted local copy the query was encoded from."""
    image = str(q.get("image", ""))
    if _is_remote(image):
        rel = f"queries/{query_id}.json"
        ws.write_json(rel, {**ws.read_json(rel), "image": image})


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
STEP_HELP = {"ingest": "add a folder / manifest / COCO JSON to the catalog (assay ingest)",
             "embed": "embed catalog images not embedded yet (assay embed)",
             "index": "grow (or build) the FAISS indexes (assay index)",
             "mine": "targeted selection for one query or a JSON list of queries (assay mine)"}


def _parser() -> argparse.ArgumentParser:
    from apps.cli.argspec import add_options

    p = argparse.ArgumentParser(prog="python -m apps.jobs", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="step", required=True)
    for name in CLI_STEPS:  # every option of the `assay` command, from its signature
        s = sub.add_parser(name, help=STEP_HELP[name])
        add_options(s, cli_functions(name)[0])
    sub.choices["mine"].add_argument("--run-id", help="also write selections/<query_id>.<RUN_ID>.parquet")
    s = sub.add_parser("pipeline", help="run a pipeline spec's steps once")
    s.add_argument("spec", help="pipeline TOML (platform/pipelines/*.toml)")
    s.add_argument("--run-id", required=True)
    s.add_argument("--scheduled-at", help="ISO time of the window this run serves (recorded in its report)")
    for name, module in OPTIONAL_STEPS.items():
        if _importable(module):
            sub.add_parser(name, help=f"`assay {name} …` as a job (every option passes through)")
    return p


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _run(a: argparse.Namespace) -> dict:
    """Run the step parsed into ``a``: a core step calls its command's function with the parsed values."""
    if a.step in CLI_STEPS:
        from apps.cli.argspec import option_values

        values = option_values(a, cli_functions(a.step)[0], drop=("as_json",))
        if a.step == "ingest":
            return _ingest_report(values["workspace"], _call("ingest", values))
        if a.step == "embed":
            return _embed_report(values["workspace"], _call("embed", values))
        if a.step == "index":
            return _index_report(values["workspace"], values["model"], _call("index", values))
        return _mine_from_args(values, a.run_id)
    if a.step == "pipeline":
        return pipeline_step(a.spec, run_id=a.run_id, scheduled_at=a.scheduled_at)
    return _optional(a.step, a.args)


def _mine_from_args(values: dict, run_id: str | None) -> dict:
    """``assay mine``'s function on the parsed values; remote query images (``--image s3://…`` or in the
    ``--queries`` file) are fetched to local files first and named by their URI in ``queries/<id>.json``."""
    image, path = values.get("image"), values.get("queries")
    items = _read_queries(path) if path else [{"image": image}] if image else []
    if not any(_is_remote(str(q.get("image", ""))) for q in items if isinstance(q, dict)):
        results = _call("mine", values)
        return _mine_report(values["workspace"], items, results if isinstance(results, list) else [results], run_id)
    with tempfile.TemporaryDirectory(prefix="assay-query-") as tmp:
        if path:
            local = os.path.join(tmp, "queries.json")
            with open(local, "w") as f:
                json.dump([_local_query(dict(q), os.path.join(tmp, str(n))) for n, q in enumerate(items)], f)
            values = {**values, "queries": local}
        else:
            values = {**values, "image": _local_query({"image": image}, os.path.join(tmp, "0"))["image"]}
        results = _call("mine", values)
    return _mine_report(values["workspace"], items, results if isinstance(results, list) else [results], run_id)


def _read_queries(path: str) -> list[dict]:
    try:
        with open(path) as f:
            items = json.load(f)
    except OSError as e:
        raise UserError(f"{path}: cannot read the queries file ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(items, list):
        raise UserError(f"{path}: expected a JSON list of queries")
    return items


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

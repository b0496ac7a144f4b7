"""The first hour's flow, ``assay ingest -> embed -> index -> mine``: the step a workspace still lacks, and the
command to run after each step.

A hint always carries ``-w WORKSPACE`` (a hint without it would send the user to the default workspace) and names the
*first* missing step: ``assay mine`` on a fresh workspace says to ingest, never to index (which would then say to
embed, which would then say the catalog is missing).
"""

from __future__ import annotations

from typing import Iterable

from actors.catalog.schema import IMAGES
from actors.core.errors import UserError
from actors.core.workspace import Workspace
from apps.cli.select import DEFAULT_MODEL


def _model_flag(model: str) -> str:
    return "" if model == DEFAULT_MODEL else f" --model {model}"


def _embed_command(ws: Workspace, model: str) -> str:
    name = "" if model == DEFAULT_MODEL else f" -b BACKBONE --name {model}"
    return f"assay embed -w {ws.uri}{name}"


def has_features(ws: Workspace, model: str) -> bool:
    """Whether ``features/<model>/`` holds at least one committed shard."""
    from actors.core.shards import ShardedDataset
    from actors.features.store import features_dir

    return bool(ShardedDataset(ws, features_dir(model)).manifest()["shards"])


def has_index(ws: Workspace, model: str, kind: str = "region") -> bool:
    """Whether ``model``'s index of ``kind`` (single or sharded) has been built."""
    from actors.selection.index import index_dir

    return ws.exists(index_dir(model, kind))


def missing_before_index(ws: Workspace, model: str) -> UserError | None:
    """The error naming the first step ``assay index`` (or ``mine``) still needs: ingest, or embed; None if none."""
    if has_features(ws, model):
        return None
    if not ws.exists(IMAGES):
        return UserError(f"{ws.path(IMAGES)}: no catalog yet; start with `assay ingest FOLDER -w {ws.uri}`, "
                         f"then `assay embed`, `assay index`")
    return UserError(f"{ws.path(f'features/{model}')}: no features for model {model!r}; run "
                     f"`{_embed_command(ws, model)}`, then `assay index -w {ws.uri}{_model_flag(model)}`")


def missing_before_mine(ws: Workspace, models: Iterable[tuple[str, str]]) -> UserError | None:
    """The error naming the first step ``assay mine`` still needs for its ``(model, method)`` queries; None if
    none (ingest, embed, then ``assay index -w WS``)."""
    for model, method in dict.fromkeys(models):
        err = missing_before_index(ws, model)
        if err is not None:
            return err
        kind = "global" if method == "global" else "region"
        if not has_index(ws, model, kind):
            return UserError(f"{ws.path(f'index/{model}')}: no {kind} index for model {model!r}; run "
                             f"`assay index -w {ws.uri}{_model_flag(model)}`")
    return None


def next_after(step: str, ws: Workspace, model: str = DEFAULT_MODEL, *, split: str | None = None) -> str:
    """The line printed after a successful ``step`` (ingest, embed, index): the command to run next. ``split``: the
    split an ingest gave its images (``assay embed`` reads ``pool`` unless told)."""
    split_flag = f" --split {split}" if split and split != "pool" else ""
    nxt = {"ingest": _embed_command(ws, model) + split_flag,
           "embed": f"assay index -w {ws.uri}{_model_flag(model)}",
           "index": f"assay mine -w {ws.uri}{_model_flag(model)} --image QUERY.jpg --box x0,y0,x1,y1"}[step]
    return f"next: {nxt}"


__all__ = ["has_features", "has_index", "missing_before_index", "missing_before_mine", "next_after"]

"""``assay learn`` (active-learning rounds of detector retraining) and ``assay labels import|remove-pseudo``."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from apps.cli.options import JsonOpt, SeedOpt, WorkspaceOpt
from apps.cli.output import console, emit, table

labels_app = typer.Typer(help="Labels from a labeling team (COCO JSON) and pseudo-labels of a run.",
                         no_args_is_help=True)


def _priority(ws, selection: str | None) -> list[str] | None:
    """Image ids of a targeted-selection result (``selections/<id>.parquet`` or a path), best first."""
    if not selection:
        return None
    import os

    import pyarrow.parquet as pq

    from actors.core.errors import UserError

    rel = selection if selection.endswith(".parquet") else f"selections/{selection}.parquet"
    if os.path.isfile(selection):
        t = pq.read_table(selection)
    elif ws.exists(rel):
        t = ws.read_table(rel)
    else:
        raise UserError(f"--priority: no selection {selection!r} (looked for {ws.path(rel)})")
    if "image_id" not in t.column_names:
        raise UserError(f"--priority {selection}: the selection has no image_id column")
    rows = t.to_pylist()
    if "rank" in t.column_names:
        rows.sort(key=lambda r: r["rank"])
    return list(dict.fromkeys(r["image_id"] for r in rows))


def learn(workspace: WorkspaceOpt = "./assay-workspace",
          rounds: Annotated[int, typer.Option("--rounds", help="Rounds after the initial training.")] = 3,
          budget: Annotated[int, typer.Option("--budget", help="Images sent to labeling per round.")] = 20,
          strategy: Annotated[str, typer.Option("--strategy", help="random, entropy, coreset, "
                                                "uncertainty_robustness or weighted.")] = "uncertainty_robustness",
          pseudo: Annotated[bool, typer.Option("--pseudo", help="Train on confident detections of the unselected "
                                               "pool too (source=pseudo rows, removable by run).")] = False,
          priority: Annotated[Optional[str], typer.Option("--priority", help="A targeted-selection result "
                                                          "(query id or .parquet): its images are labeled first.")] = None,
          initial: Annotated[int, typer.Option("--initial", help="Initial labeled images (from --initial-split).")] = 20,
          epochs: Annotated[int, typer.Option("--epochs", help="Training epochs per round.")] = 24,
          detector: Annotated[str, typer.Option("--detector", help="dense-lite0 (CPU default); on its cached "
                                                "map fcos-head-lite0, ssdlite-head-lite0, retinanet-head-lite0; "
                                                "end to end fcos-lite0, fasterrcnn-lite0.")] = "dense-lite0",
          max_pool: Annotated[Optional[int], typer.Option("--max-pool", help="Score at most this many pool "
                                                          "images (seeded sample).")] = None,
          run: Annotated[Optional[str], typer.Option("--run", help="Run id (resume it when it exists).")] = None,
          warm_start: Annotated[bool, typer.Option("--warm-start", help="Rounds after the first fine-tune the "
                                                   "previous round's model instead of training from the seed.")] = False,
          ray: Annotated[Optional[bool], typer.Option("--ray/--no-ray", help="Score the pool as a Ray Data stage "
                                                      "(batched actors, GPU when present); default: on Ray when "
                                                      "RAY_ADDRESS is set.")] = None,
          init: Annotated[Optional[str], typer.Option("--init", help="Start from a compressed model (an `assay "
                                                      "compress --out` folder): its pruned trunk, frozen, and head.")]
          = None,
          seed: SeedOpt = 0, as_json: JsonOpt = False) -> None:
    """Retrain a detector in rounds: score the pool, label the most informative images, retrain, measure mAP."""
    _check_counts(rounds=rounds, budget=budget, epochs=epochs, max_pool=max_pool)
    from actors.active.rounds import LearnConfig, run_learning
    from actors.core.workspace import Workspace
    from actors.detection.train import TrainConfig

    ws = Workspace(workspace)
    extra = {}
    if init is not None:  # the `compressed` detector registers itself on import (actors.compression.detector)
        import os

        import actors.compression.detector  # noqa: F401
        extra = {"detector": "compressed", "backbone": os.path.abspath(init)}
    cfg = LearnConfig(**{"rounds": rounds, "budget": budget, "strategy": strategy, "pseudo": pseudo,
                         "initial": initial, "detector": detector, "max_pool": max_pool, "seed": seed,
                         "warm_start": warm_start,
                         "train": TrainConfig(epochs=epochs, seed=seed), **extra})
    _check_strategy(strategy)
    console.quiet = as_json
    try:
        rep = run_learning(ws, cfg, run_id=run, priority=_priority(ws, priority), progress=not as_json,
                           ray_scoring=ray, on_round=lambda r, row: console.print(
                               f"round {r}: {row['n_labeled']} labeled images, mAP@.5 {row['value']:.1f}% "
                               f"({row['seconds']:.0f}s)"))
    finally:
        console.quiet = False  # also when learning fails: the console is shared by every later command
    emit(vars(rep), as_json, lambda _, r=rep: (
        console.print(table(f"learning curve of run {r.run_id} ({strategy}{' + pseudo' if pseudo else ''})",
                            ["round", "labeled images", "mAP@.5 %", "mAP@[.5:.95] %", "seconds"],
                            [(i, n, f"{a:.1f}", f"{b:.1f}", f"{s:.0f}") for i, (n, a, b, s)
                             in enumerate(zip(r.n_labeled, r.map50, r.map, r.seconds))])),
        console.print(f"curve: {r.curve_path}  (assay estimate {r.curve_path} --target …)"),
        _print_waiting(r)))


def _print_waiting(rep) -> None:
    """What to do when the run stopped to wait for labels."""
    if rep.waiting:
        console.print(f"waiting for labels of {len(rep.waiting)} images (runs/{rep.run_id}/to_label.json): "
                      f"`assay labels import FILE --run {rep.run_id}`, then `assay learn --run {rep.run_id}` again "
                      "(an image listed in FILE with no annotation counts as labelled, with no objects)")


# the least each count may be: rounds 0 trains the initial model only; a round labels and retrains on >= 1 image
MIN_COUNTS = {"rounds": 0, "budget": 1, "epochs": 1, "max_pool": 1}


def _check_counts(**counts: int | None) -> None:
    """A one-line ``UserError`` naming the first option below its least value (see ``MIN_COUNTS``)."""
    from actors.core.errors import UserError

    for name, value in counts.items():
        if value is not None and value < MIN_COUNTS[name]:
            raise UserError(f"--{name.replace('_', '-')} must be >= {MIN_COUNTS[name]}, got {value}")


def _check_strategy(name: str) -> None:
    from actors.active.strategies import list_strategies
    from actors.core.errors import UserError

    if name not in list_strategies():
        raise UserError(f"--strategy {name!r}: unknown; choose one of {', '.join(list_strategies())}")


@labels_app.command("import")
def labels_import(file: Annotated[str, typer.Argument(help="COCO JSON returned by a labeling team.")],
                  workspace: WorkspaceOpt = "./assay-workspace",
                  run: Annotated[Optional[str], typer.Option("--run", help="Add the images to this run's "
                                                             "labeled set.")] = None,
                  as_json: JsonOpt = False) -> None:
    """Merge human labels from a COCO file into the catalog (unknown images/categories: error, nothing changed)."""
    from actors.active.oracle import import_labels
    from actors.core.workspace import Workspace

    rep = import_labels(Workspace(workspace), file, run_id=run)
    emit(vars(rep), as_json, lambda _, r=rep: console.print(
        f"{r.path}: {r.added} boxes added on {r.images} images ({r.skipped_duplicates} already there, "
        f"{r.empty} images marked as holding no object)"))


@labels_app.command("remove-pseudo")
def labels_remove_pseudo(run: Annotated[str, typer.Option("--run", help="The run whose pseudo-labels go.")],
                         workspace: WorkspaceOpt = "./assay-workspace", as_json: JsonOpt = False) -> None:
    """Delete the pseudo-labels one active-learning run wrote."""
    from actors.active.pseudo import remove_pseudo_labels
    from actors.core.workspace import Workspace

    n = remove_pseudo_labels(Workspace(workspace), run)
    emit({"run": run, "removed": n}, as_json, lambda r: console.print(f"removed {n} pseudo-labels of run {run}"))


def register(app: typer.Typer) -> None:
    app.command("learn")(learn)
    app.add_typer(labels_app, name="labels")

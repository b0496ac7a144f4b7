"""``assay backbone train|list`` and ``assay embed``: the feature side of targeted selection."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Optional

import typer

from apps.cli.options import DEFAULT_WORKSPACE, JsonOpt, SeedOpt, WorkspaceOpt

backbone_app = typer.Typer(help="Backbones: list them, train assay-small or fine-tune Lite0 on the workspace labels.",
                           no_args_is_help=True)


@backbone_app.command("list")
def list_cmd(as_json: JsonOpt = False) -> None:
    """List the registered backbones (torchvision trunks need local weights; Assay never downloads)."""
    from actors.features.backbones import TORCHVISION_ARCHS, list_backbones
    from apps.cli.output import console, emit, table

    def how(name: str) -> str:
        if name == "assay-small":
            return "models/assay-small.pt in the workspace (assay backbone train)"
        if name == "efficientnet-lite0-ft":
            return "models/efficientnet-lite0-ft-s<stride>.pt (assay backbone train -b efficientnet-lite0)"
        if name == "torchscript":
            return "torchscript:/path/model.pt"
        return f"{name}:/path/ckpt.pt or the torch hub cache" if name in TORCHVISION_ARCHS else ""

    rows = [{"name": n, "weights": how(n)} for n in list_backbones()]
    emit(rows, as_json, lambda r: console.print(table("backbones", ["name", "weights"],
                                                      [(x["name"], x["weights"]) for x in r])))


@backbone_app.command("train")
def train_cmd(workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
              epochs: Annotated[int, typer.Option("--epochs", help="Training epochs.")] = 15,
              crop: Annotated[int, typer.Option("--crop", help="Training crop side in pixels.")] = 48,
              max_minutes: Annotated[float, typer.Option("--max-minutes", help="Stop early after this long.")] = 2.5,
              backbone: Annotated[str, typer.Option(
                  "--backbone", "-b", help="assay-small (from scratch) | efficientnet-lite0 (fine-tune the "
                  "ImageNet trunk; writes models/efficientnet-lite0-ft-s<stride>.pt)")] = "assay-small",
              stride: Annotated[int, typer.Option("--stride", help="Lite0 trunk stride (8 or 16).")] = 8,
              steps: Annotated[Optional[int], typer.Option(
                  "--steps", help="Fixed number of optimisation steps (no wall-clock budget).")] = None,
              seed: SeedOpt = 0, as_json: JsonOpt = False) -> None:
    """Train assay-small (or fine-tune EfficientNet-Lite0) on the train-split labels; writes models/<name>.pt."""
    from actors.features.small import train_backbone
    from apps.cli.output import console, emit, table

    rep = asdict(train_backbone(workspace, name=backbone, epochs=epochs, crop=crop, seed=seed,
                                max_minutes=max_minutes, steps=steps, stride=stride, progress=not as_json))
    emit(rep, as_json, lambda r: console.print(table(
        f"{r['name']} -> {r['checkpoint']}", ["classes", "epochs", "train crops", "val crops", "train acc",
                                               "val acc", "majority", "seconds"],
        [(len(r["classes"]) + 1, r["epochs"], r["n_train"], r["n_val"], r["train_accuracy"], r["val_accuracy"],
          r["majority"], r["seconds"])])))


def embed_cmd(workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
              backbone: Annotated[str, typer.Option(
                  "--backbone", "-b", help="efficientnet-lite0 (ImageNet-pretrained, frozen; default) | "
                  "efficientnet-lite0-ft (after `assay backbone train -b efficientnet-lite0`) | assay-small | "
                  "resnet18:/path/ckpt.pt | torchscript:/path/model.pt")]
              = "efficientnet-lite0",
              name: Annotated[Optional[str], typer.Option(
                  "--name", help="Feature-store name (default: derived from --backbone).")] = None,
              split: Annotated[Optional[list[str]], typer.Option(
                  "--split", help="Catalog split(s) to embed; 'all' for every readable image.")] = None,
              batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Images per batch.")] = None,
              actors: Annotated[Optional[int], typer.Option("--actors", help="Embedding actors.")] = None,
              num_gpus: Annotated[Optional[float], typer.Option("--num-gpus", help="GPUs per actor.")] = None,
              pca_dim: Annotated[Optional[int], typer.Option("--pca-dim", help="PCA-reduce cells to D dims.")] = None,
              max_side: Annotated[Optional[int], typer.Option(
                  "--max-side", help="Resize so the longer side is this many pixels.")] = None,
              layer: Annotated[Optional[str], typer.Option(
                  "--layer", help="Torchvision trunk: last stage kept (e.g. layer2).")] = None,
              stride: Annotated[Optional[int], typer.Option(
                  "--stride", help="Trunk output stride (efficientnet-lite0: 8 or 16; default: the default "
                                   "backbone's measured choice, see docs/benchmarks.md).")] = None,
              codec: Annotated[Optional[str], typer.Option(
                  "--codec", help="How cells are stored: pq (default for a new store), int8, fp16; an existing "
                                  "store keeps its own.")] = None,
              pq_m: Annotated[Optional[int], typer.Option(
                  "--pq-m", help="With --codec pq: bytes per cell (divides the dim; default dim/2).")] = None,
              pool: Annotated[Optional[int], typer.Option(
                  "--pool", help="Average k x k backbone cells into one stored cell (default: 16-px cells).")] = None,
              shard_size: Annotated[int, typer.Option("--shard-size", help="Images per output shard.")] = 256,
              local: Annotated[Optional[bool], typer.Option(
                  "--local/--ray", help="Run in-process, or on Ray (default: Ray when a cluster is running to join "
                                        "(RAY_ADDRESS, `assay cluster up`), in-process for a small job, else a new "
                                        "local Ray instance; the output says which ran).")] = None,
              as_json: JsonOpt = False) -> None:
    """Embed catalog images into features/<name>/ (region grids; resumable, Ray Data actor pool)."""
    from actors.core.workspace import Workspace
    from apps.cli.output import console, emit, fmt, table
    from apps.cli.steps import next_after

    rep = run_embed(workspace=workspace, backbone=backbone, name=name, split=split, batch_size=batch_size,
                    actors=actors, num_gpus=num_gpus, pca_dim=pca_dim, max_side=max_side, layer=layer, stride=stride,
                    codec=codec, pq_m=pq_m, pool=pool, shard_size=shard_size, local=local, progress=not as_json)
    emit(rep, as_json, lambda r: (console.print(table(
        f"features/{r['model']} ({r['mode']}, {r['codec']})", ["images", "embedded", "errors", "shards new/done", "dim",
                                                 "cell px", "KiB/image", "images/s (steady)"],
        [(r["n_images"], r["n_embedded"], r["n_errors"], f"{r['shards_written']}/{r['shards_skipped']}", r["dim"],
          r["cell_stride"], r["bytes_per_image"] / 1024,
          f"{fmt(r['images_per_s'])} ({fmt(r['steady_images_per_s'])})")])),
        console.print(f"ran {r['path']}"), console.print(next_after("embed", Workspace(workspace), r["model"]))))


def run_embed(*, workspace: str, backbone: str, name: str | None, split: list[str] | None, batch_size: int | None,
              actors: int | None, num_gpus: float | None, pca_dim: int | None, max_side: int | None,
              layer: str | None, stride: int | None, codec: str | None, pq_m: int | None, pool: int | None,
              shard_size: int, local: bool | None, progress: bool) -> dict:
    """What ``assay embed`` and the ``embed`` job step run (the options of :func:`embed_cmd`): the embed report.

    Unless ``local`` is True, a local head started by ``assay cluster up`` is joined when ``RAY_ADDRESS`` names no
    other cluster (no cold Ray start)."""
    from actors.core.runtime import Resources
    from actors.features.embed import embed_pool
    from apps.cli.cluster import join_local_head

    if local is not True:
        join_local_head()

    splits = None if split and "all" in split else tuple(split or ("pool",))
    res = Resources.auto(pool_size=actors, num_gpus=num_gpus, batch_size=batch_size)
    return asdict(embed_pool(workspace, model=backbone, name=name, splits=splits, resources=res,
                             shard_size=shard_size, progress=progress, max_side=max_side, pca_dim=pca_dim,
                             backbone_cfg={k: v for k, v in (("layer", layer), ("stride", stride)) if v} or None,
                             local=local, codec=codec, pq_m=pq_m, pool=pool))


def register(app: typer.Typer) -> None:
    app.add_typer(backbone_app, name="backbone")
    app.command("embed")(embed_cmd)

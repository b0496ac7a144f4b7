"""``assay compress``: a run's detector -> a pruned (and optionally int8) model, with a measured report."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from apps.cli.options import DEFAULT_WORKSPACE, JsonOpt, SeedOpt, WorkspaceOpt


def compress_cmd(workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
                 run: Annotated[str, typer.Option("--run", help="Run id whose detector (runs/RUN/models/*.pt) "
                                                  "is compressed.")] = ...,
                 latency: Annotated[float, typer.Option(
                     "--latency", help="Latency budget as a fraction of the original (0.5 = half).")] = 0.5,
                 int8: Annotated[bool, typer.Option("--int8", help="Also write the ONNX Runtime static int8 "
                                                    "model (calibrated on training images).")] = False,
                 out: Annotated[str, typer.Option("--out", help="Output folder (model.onnx, model.pt, "
                                                  "report.json, summary.md).")] = ...,
                 data_free: Annotated[bool, typer.Option(
                     "--data-free", help="Also report SPIQ-style data-free int8 accuracy (simulated).")] = False,
                 importance: Annotated[str, typer.Option("--importance", help="taylor | magnitude")] = "taylor",
                 epochs: Annotated[int, typer.Option("--epochs", help="Fine-tuning epochs after pruning.")] = 2,
                 threads: Annotated[int, typer.Option(
                     "--threads", help="CPU threads for timing (1 is stable on shared machines).")] = 1,
                 checkpoint: Annotated[Optional[str], typer.Option(
                     "--checkpoint", help="Workspace-relative checkpoint instead of the run's.")] = None,
                 timing_runs: Annotated[int, typer.Option(
                     "--timing-runs", help="Timed calls per round (3 rounds, alternating models).")] = 20,
                 max_val: Annotated[Optional[int], typer.Option("--max-val", help="Use at most N val images.")]
                 = None,
                 ray: Annotated[bool, typer.Option("--ray/--local", help="Fine-tune on Ray Train (TorchTrainer; "
                                                   "RAY_ADDRESS or a local instance) instead of in this process.")]
                 = False,
                 measured_steps: Annotated[int, typer.Option(
                     "--measured-steps", help="Meet the budget in measured ONNX Runtime latency: up to N "
                     "plan-build-time steps on a calibrated LUT (0: the LUT's prediction only).")] = 0,
                 lut: Annotated[str, typer.Option(
                     "--lut", help="profile: per-layer cost from a whole-graph ONNX Runtime profile, scaled by MACs; "
                     "grid: every conv timed alone over a channel grid (cached in the workspace).")] = "profile",
                 protect_head: Annotated[bool, typer.Option(
                     "--protect-head/--prune-head-input", help="Keep the trunk's output channels (the head's "
                     "input) so the pruned trunk can be distilled back to the original's map.")] = True,
                 distill_steps: Annotated[int, typer.Option(
                     "--distill-steps", help="Feature-distillation steps of the pruned trunk on unlabeled train + "
                     "pool images before fine-tuning (0: none).")] = 1500,
                 head_epochs: Annotated[int, typer.Option(
                     "--head-epochs", help="After distillation: epochs of the head on the frozen trunk's cached "
                     "maps (--epochs is the whole-network fine-tuning without distillation or with --ray).")] = 12,
                 seed: SeedOpt = 0, as_json: JsonOpt = False) -> None:
    """Prune to a latency budget (device LUT + knapsack), distill the pruned trunk to the original's map, fine-tune with the detector training loop (a checkpoint
    every epoch; run again to resume), fold BN, export ONNX + state dict, report. dense-lite0 detectors only."""
    from actors.compression.report import CompressConfig, compress_run
    from actors.core.workspace import Workspace
    from apps.cli.output import console, emit

    cfg = CompressConfig(latency=latency, int8=int8, data_free=data_free, importance=importance, finetune_epochs=epochs,
                         threads=threads, max_val_images=max_val, seed=seed, timing_runs=timing_runs,
                         ray=ray, measured_steps=measured_steps, lut=lut, protect_head=protect_head,
                         distill_steps=distill_steps, head_epochs=head_epochs)
    log = (lambda s: None) if as_json else (lambda s: console.print(s))
    rep = compress_run(Workspace(workspace), run, out, cfg, checkpoint=checkpoint, log=log)

    def render(r: dict) -> None:
        from actors.compression.report import summary

        console.print(summary(r).split("\n\nPruning plan")[0])
        console.print(f"wrote {out}/model.onnx, model.pt{', model.int8.onnx' if int8 else ''}, report.json, summary.md")
    emit(rep, as_json, render)


def register(app: typer.Typer) -> None:
    app.command("compress")(compress_cmd)

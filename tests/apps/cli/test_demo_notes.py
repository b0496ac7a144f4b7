"""What the demo prints says what its numbers are (#25 items 2 and 5): its compression is a quick pass on a few
images, and its collection plan uses the same cap as `assay plan` and the app."""

from __future__ import annotations

from pathlib import Path

from apps.cli import demo
from apps.cli.output import console


def test_the_demo_says_its_compression_is_a_quick_pass_on_few_images(tmp_path, monkeypatch):
    import actors.compression.report as report
    from tests.actors.compression.test_verdict import REPORT

    seen = {}

    def fake(ws, run, out, cfg, log=None):
        seen["cfg"] = cfg
        rep = dict(REPORT, config={**REPORT["config"], "distill_steps": cfg.distill_steps,
                                   "max_train_images": cfg.max_train_images})
        rep["models"] = {k: {**m, "accuracy": {**m["accuracy"], "n_images": cfg.max_val_images}}
                         for k, m in REPORT["models"].items()}
        return rep

    monkeypatch.setattr(report, "compress_run", fake)
    with console.capture() as cap:
        out = demo._compress(None, Path(tmp_path))
    text = cap.get()
    assert seen["cfg"].max_val_images == 12
    assert "not a real compression" in out["note"] and "on 12 training images" in out["note"]
    assert "accuracy on 12 val images" in out["note"] and out["note"] in text
    assert "warning: compressed lost" in text  # the drop warning is there too, with its "only 12 val images"


def test_the_demo_plan_uses_the_cap_of_assay_plan_and_the_app():
    from estimators.loc import DEFAULT_CAP_FACTOR

    n, v = [20, 35, 50, 65], [3.6, 7.2, 13.0, 13.4]
    with console.capture() as cap:
        out = demo._estimate_and_plan(n, v)
    assert out["plan"]["max_total"] == DEFAULT_CAP_FACTOR * max(n)
    assert f"at most {DEFAULT_CAP_FACTOR:g}x today's set" in cap.get()


def test_a_flat_learning_curve_skips_estimate_and_plan_with_the_reason(capsys):
    """A tiny --images world can leave the detector at 0 in every round: the demo says so and goes on."""
    from apps.cli.demo import _estimate_and_plan

    out = _estimate_and_plan([5, 15, 25], [0.0, 0.0, 0.0])
    assert "flat curve" in out["skipped"]
    assert "no estimate or plan" in capsys.readouterr().out
    assert "plan" in _estimate_and_plan([5, 15, 25], [2.0, 6.0, 9.0])

"""What a compression cost in accuracy: the mAP@.5 change of every variant beside its speed-up, and a one-line
warning, naming what to change, when a variant loses more than :data:`MAX_MAP_DROP` of the original's mAP@.5.

Pure Python (no torch): ``assay compress``, its summary, ``assay demo`` and the planner's Compression page all read
the same figures from here. Accuracies are fractions (0-1, as the report stores them); what is shown is in percent
points of mAP@.5.
"""

from __future__ import annotations

from typing import Any

MAX_MAP_DROP = 0.10  # warn when a variant keeps less than 90% of the original's mAP@.5 (a relative drop)
FEW_VAL_IMAGES = 50  # below this many validation images a mAP change is noise as much as signal


def map_change(original: float, variant: float) -> dict[str, float | None]:
    """The change from ``original`` to ``variant`` mAP (fractions): ``points`` (percent points, signed) and
    ``relative`` (signed fraction of the original; None when the original is 0)."""
    points = 100.0 * (variant - original)
    return {"points": points, "relative": (variant - original) / original if original > 0 else None}


def changes(report: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per variant of an ``assay compress`` report: ``speedup`` (original p50 / variant p50), ``map50`` (percent),
    ``points`` and ``relative`` (its mAP@.5 change against the original, see :func:`map_change`)."""
    models = report["models"]
    o = models["original"]
    out = {}
    for name, m in models.items():
        ch = map_change(o["accuracy"]["map50"], m["accuracy"]["map50"])
        out[name] = {"speedup": o["latency_ms"]["p50"] / m["latency_ms"]["p50"],
                     "map50": 100.0 * m["accuracy"]["map50"], **ch}
    return out


def drop_warning(name: str, original: float, variant: float, *, config: dict[str, Any] | None = None,
                 n_images: int | None = None, max_drop: float = MAX_MAP_DROP) -> str | None:
    """One line when ``variant``'s mAP@.5 (fraction) is more than ``max_drop`` (relative) below ``original``'s,
    saying by how much and what to change; None otherwise. ``config`` is the report's ``config`` (for the current
    settings), ``n_images`` the validation images the figures come from."""
    ch = map_change(original, variant)
    if ch["relative"] is None or ch["relative"] >= -max_drop:
        return None
    line = (f"warning: {name} lost {-ch['points']:.1f} points of mAP@.5 ({100 * original:.1f} -> {100 * variant:.1f}, "
            f"{100 * ch['relative']:.0f}%; more than the {max_drop:.0%} allowed): ")
    return line + _advice(name, config or {}) + _few(n_images)


def _advice(name: str, cfg: dict[str, Any]) -> str:
    """What to change, in the flags of ``assay compress`` and their current values."""
    if name.endswith("int8"):
        return ("the int8 step costs it; ship model.onnx (fp32) or calibrate on more training images")
    lat = float(cfg.get("latency", 0.5))
    looser = f"--latency {min(1.0, lat + 0.2):g} (now {lat:g})"
    if cfg.get("distill_steps", 0) and cfg.get("protect_head", True) and not cfg.get("ray"):
        more = (f"more --distill-steps (now {cfg['distill_steps']}) or --head-epochs "
                f"(now {cfg.get('head_epochs', '?')})")
    else:
        more = f"more --epochs (now {cfg.get('finetune_epochs', '?')})"
    return f"give it a looser {looser}, or {more}"


def _few(n_images: int | None) -> str:
    if n_images is not None and n_images < FEW_VAL_IMAGES:
        return f"; measured on only {n_images} val images, so the change is noisy"
    return ""


def accuracy_warnings(report: dict[str, Any], max_drop: float = MAX_MAP_DROP) -> list[str]:
    """The :func:`drop_warning` lines of every variant of an ``assay compress`` report (empty when none drops)."""
    models = report["models"]
    o = models["original"]["accuracy"]
    lines = [drop_warning(name, o["map50"], m["accuracy"]["map50"], config=report.get("config"),
                          n_images=o.get("n_images"), max_drop=max_drop)
             for name, m in models.items() if name != "original"]
    return [w for w in lines if w]


__all__ = ["MAX_MAP_DROP", "map_change", "changes", "drop_warning", "accuracy_warnings"]

"""Measure a learning curve on the workspace: train the default backbone on growing subsets of the labeled split.

This is the stand-in for the active-learning loop's curve (which will come from detector retraining): the metric is
the backbone's validation crop-classification accuracy in percent, measured at several training-set sizes. The
curve is written to ``runs/<run_id>/curve.parquet`` with the DESIGN.md columns ``round, n_labeled, metric, value``
(``n_labeled`` counts training crops: labelled objects plus as many background crops).

Each subset run overwrites the default checkpoint, so the full-size run goes last and leaves the final backbone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pyarrow as pa

from actors.core.errors import UserError
from actors.core.workspace import Workspace

CURVE_SCHEMA = pa.schema([("round", pa.int32()), ("n_labeled", pa.int64()), ("metric", pa.string()),
                          ("value", pa.float64()), ("seconds", pa.float64())])


@dataclass
class CurveReport:
    run_id: str
    path: str
    n: list[int]
    value: list[float]
    metric: str = "val_crop_accuracy_pct"


def measure_backbone_curve(ws: Workspace, *, fractions: Sequence[float] = (0.125, 0.25, 0.5, 1.0),
                           run_id: str = "backbone-curve", seed: int = 0, max_minutes: float = 2.5,
                           max_windows: int = 8000, progress: bool = True) -> CurveReport:
    """Train ``assay-small`` on each fraction of the training windows (smallest first) and record val accuracy.

    Parameters
    ----------
    fractions : increasing fractions in (0, 1] of the labelled training images (at most ``max_windows // 2``); the last (normally 1.0) leaves the final
        checkpoint in ``models/assay-small.pt``.
    max_minutes : time cap of the full-size run; smaller runs get a proportional share.

    Raises
    ------
    ValueError
        ``fractions`` not strictly increasing in (0, 1].
    """
    from actors.features.small import train_backbone
    from actors.catalog.schema import load_labels

    fr = [float(f) for f in fractions]
    if not fr or any(not 0 < f <= 1 for f in fr) or any(b <= a for a, b in zip(fr, fr[1:])):
        raise UserError(f"fractions must be strictly increasing in (0, 1], got {list(fractions)}")
    # train_backbone takes labelled images in a fixed order until max_windows // 2 images: cap by the data we have
    n_images = len(set(load_labels(ws, split="train").column("image_id").to_pylist()))
    budget = min(max_windows, 2 * n_images)
    rows, seen = [], set()
    for i, f in enumerate(fr):
        rep = train_backbone(ws, max_windows=max(8, int(round(f * budget))), seed=seed,
                             max_minutes=max_minutes * f, progress=progress)
        if rep.n_train in seen:  # the data ran out: a larger fraction gives the same set
            continue
        seen.add(rep.n_train)
        rows.append({"round": i, "n_labeled": rep.n_train, "metric": "val_crop_accuracy_pct",
                     "value": 100.0 * rep.val_accuracy, "seconds": rep.seconds})
    path = ws.write_table(f"runs/{run_id}/curve.parquet", pa.Table.from_pylist(rows, schema=CURVE_SCHEMA))
    return CurveReport(run_id, path, [r["n_labeled"] for r in rows], [r["value"] for r in rows])

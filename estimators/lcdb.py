"""Read the Learning Curve Database (LCDB 0.1.0, Mohr et al. 2022): the public curves the shipped prior learns from.

LCDB's source distribution (PyPI ``lcdb==0.1.0``; get it with ``pip download --no-deps --no-binary :all:
lcdb==0.1.0``) ships ``lcdb/database-accuracy.csv``: learning curves of sklearn learners on OpenML datasets, with
columns ``openmlid, learner, size_train, outer_seed, inner_seed, score_valid, ...``. We average the seeds per
(dataset, learner, size) and use the validation accuracy in percent. ``import lcdb`` needs undeclared packages, so
the CSV is read directly with pandas, from the CSV itself, a folder holding it, or the sdist ``.tar.gz``.

Nothing here downloads: the caller passes the file.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from estimators.curves import CurveError, LearningCurve, make_curve
from estimators.errors import EstimatorInputError

LCDB_VERSION = "0.1.0"
CSV_NAME = "database-accuracy.csv"
COLUMNS = ["openmlid", "learner", "size_train", "score_valid"]


@dataclass(frozen=True)
class LcdbCurve:
    """One LCDB curve: the OpenML dataset id, the learner, and the seed-averaged accuracy curve (percent)."""

    openmlid: int
    learner: str
    curve: LearningCurve


def _read_frame(path: Path):
    import pandas as pd

    if path.is_dir():
        hits = sorted(path.rglob(CSV_NAME))
        if not hits:
            raise EstimatorInputError(f"{path}: no {CSV_NAME} under this folder")
        path = hits[0]
    if not path.exists():
        raise EstimatorInputError(f"{path}: no such file (pass LCDB's {CSV_NAME}, a folder holding it, or the "
                                  f"lcdb-{LCDB_VERSION}.tar.gz source distribution)")
    try:
        if path.name.endswith(".tar.gz"):
            with tarfile.open(path) as tf:
                member = next((m for m in tf.getmembers() if m.name.endswith("/" + CSV_NAME)), None)
                if member is None:
                    raise EstimatorInputError(f"{path}: the archive holds no {CSV_NAME}")
                return pd.read_csv(tf.extractfile(member), usecols=COLUMNS)
        return pd.read_csv(path, usecols=COLUMNS)
    except EstimatorInputError:
        raise
    except Exception as e:  # a truncated archive, a CSV without the columns, ...
        raise EstimatorInputError(f"{path}: cannot read LCDB accuracy curves (columns {COLUMNS}): {e}") from e


def read_lcdb(path, *, cache: str | Path | None = None) -> list[LcdbCurve]:
    """Every usable LCDB curve, seeds averaged, accuracy in percent, sorted by (openmlid, learner).

    Parameters
    ----------
    path : str or Path
        ``database-accuracy.csv``, a folder holding it, or the ``lcdb-0.1.0.tar.gz`` sdist.
    cache : str or Path, optional
        A Parquet file keeping the seed-averaged table (reused when newer than ``path``; written atomically).

    Returns
    -------
    list of LcdbCurve
        Curves that :func:`estimators.curves.make_curve` accepts (degenerate ones are left out).

    Raises
    ------
    EstimatorInputError
        A missing or unreadable file.
    """
    import pandas as pd

    path = Path(path)
    cache = Path(cache) if cache else None
    if cache and cache.exists() and path.exists() and cache.stat().st_mtime >= path.stat().st_mtime:
        agg = pd.read_parquet(cache)
    else:
        df = _read_frame(path)
        df = df[np.isfinite(df["score_valid"])]
        agg = df.groupby(["openmlid", "learner", "size_train"], as_index=False)["score_valid"].mean()
        if cache:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            agg.to_parquet(tmp)
            tmp.replace(cache)
    out = []
    for (oid, learner), g in agg.groupby(["openmlid", "learner"], sort=True):
        try:
            c = make_curve(g["size_train"], 100 * g["score_valid"].clip(0, 1), name=f"{oid}/{learner}")
        except CurveError:
            continue
        out.append(LcdbCurve(int(oid), str(learner), c))
    return out


def dataset_folds(curves: list[LcdbCurve], k: int, *, seed: int = 0) -> dict[int, int]:
    """Assign each OpenML dataset to one of ``k`` folds (balanced, seeded): ``{openmlid: fold}``."""
    oids = sorted({c.openmlid for c in curves})
    rng = np.random.default_rng(seed)
    return {oid: int(i) for oid, i in zip(oids, rng.permutation(len(oids)) % k)}

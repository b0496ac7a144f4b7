"""Learning curves: validation, readers, seed aggregation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from estimators.curves import CurveError, make_curve, read_curves, true_required_n


def test_make_curve_sorts_and_converts_errors_to_scores():
    c = make_curve([400, 100, 200], [0.2, 0.4, 0.3], direction="lower", scale="fraction")
    np.testing.assert_array_equal(c.n, [100, 200, 400])
    np.testing.assert_allclose(c.score(), [60, 70, 80])
    assert c.score_target(0.1) == pytest.approx(90)
    assert c.from_score(90) == pytest.approx(0.1)


@pytest.mark.parametrize("n,v,kw,match", [
    ([100, 200], [50, 60], {}, "2 distinct size"),
    ([100, 200, 400], [50, np.nan, 60], {}, "row 2: field 'value' is nan"),
    ([100, np.inf, 400], [50, 55, 60], {}, "row 2: field 'n' is inf"),
    ([100, 200, 200], [50, 55, 60], {}, "duplicate n=200"),
    ([100, 200, 400], [55, 55, 55], {}, "all 3 values equal"),
    ([100, 200, 400], [50, 55, 160], {}, "outside the percent range"),
    ([100, 200, 400], [0.5, 0.55, 1.6], {"scale": "fraction"}, "outside the fraction range"),
    ([-1, 200, 400], [50, 55, 60], {}, "must be > 0"),
    ([100, 200, 400], [50, 55, 60], {"direction": "up"}, "direction"),
])
def test_degenerate_curves_raise_precise_errors(n, v, kw, match):
    with pytest.raises(CurveError, match=match):
        make_curve(n, v, **kw)


def test_curve_error_is_a_value_error():
    assert issubclass(CurveError, ValueError)


def _rows():
    rows = []
    for seed, off in ((0, 0.0), (1, 2.0)):
        for n, v in ((100, 50), (200, 60), (400, 66), (800, 70)):
            rows.append({"n": n, "value": v + off, "seed": seed, "curve": "cls_a"})
    rows += [{"n": n, "value": v, "seed": 0, "curve": "cls_b"} for n, v in ((100, 30), (200, 40), (400, 45))]
    return rows


@pytest.mark.parametrize("ext", ["csv", "parquet", "json"])
def test_readers_group_curves_and_average_seeds(tmp_path, ext):
    df = pd.DataFrame(_rows())
    path = tmp_path / f"curves.{ext}"
    if ext == "csv":
        df.to_csv(path, index=False)
    elif ext == "parquet":
        df.to_parquet(path)
    else:
        path.write_text(json.dumps(_rows()))
    a, b = read_curves(path)
    assert (a.name, b.name) == ("cls_a", "cls_b")
    np.testing.assert_allclose(a.value, [51, 61, 67, 71])
    np.testing.assert_allclose(a.spread, np.sqrt(2))
    np.testing.assert_array_equal(a.n_seeds, [2, 2, 2, 2])
    assert len(b) == 3


def test_reader_names_file_row_and_field(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("n,value\n100,50\n200,oops\n400,60\n")
    with pytest.raises(CurveError, match=r"bad.csv: row 3: field 'value' is 'oops'"):
        read_curves(path)
    path.write_text("n,value,seed\n100,50,0\n100,51,0\n200,60,0\n400,61,0\n")
    with pytest.raises(CurveError, match=r"row 3: duplicate \(n=100, seed=0\)"):
        read_curves(path)
    path.write_text("size,value\n100,50\n")
    with pytest.raises(CurveError, match="missing column"):
        read_curves(path)


def test_reader_rejects_unknown_extension_and_missing_file(tmp_path):
    (tmp_path / "c.txt").write_text("n,value\n")
    with pytest.raises(CurveError, match="unknown curve file type"):
        read_curves(tmp_path / "c.txt")
    with pytest.raises(FileNotFoundError):
        read_curves(tmp_path / "none.csv")


def test_true_required_n_interpolates_in_log_n():
    c = make_curve([100, 10000, 1000000], [50, 60, 70])
    assert true_required_n(c, 55) == pytest.approx(1000)
    assert true_required_n(c, 80) == np.inf

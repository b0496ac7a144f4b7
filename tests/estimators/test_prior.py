"""The shipped prior: it loads, validates schema and provenance with errors naming the field, and rebuilds from LCDB."""

from __future__ import annotations

import copy
import json
import tarfile

import numpy as np
import pytest

from estimators.errors import EstimatorInputError
from estimators.laws import list_laws
from estimators.lcdb import dataset_folds, read_lcdb
from estimators.prior import (DEFAULT_PATH, PROVENANCE, PriorError, load_prior, main, prior_dict,
                              selection_from_tasks, task_estimates, validate_prior, write_prior)


def test_shipped_prior_loads_with_provenance():
    p = load_prior()
    assert p.path == str(DEFAULT_PATH) and DEFAULT_PATH.exists()
    assert set(PROVENANCE) <= set(p.provenance)
    assert p.provenance["lcdb_version"] == "0.1.0" and p.provenance["n_curves"] >= 1000
    assert p.provenance["n_datasets"] >= 100 and p.provenance["command"].startswith("python -m estimators.prior build")
    assert set(p.selection.ranking) == set(list_laws())
    for k in p.selection.ranking:
        c = p.correction(k)
        assert c.tau > 0 and len(c.log_ratios) > 10 and list(c.log_ratios) == sorted(c.log_ratios)
    assert "LCDB 0.1.0" in p.describe()


def _valid():
    return json.loads(DEFAULT_PATH.read_text())


@pytest.mark.parametrize("edit,match", [
    (lambda o: o.pop("provenance"), "missing field 'provenance'"),
    (lambda o: o["provenance"].pop("n_curves"), "provenance: missing field 'n_curves'"),
    (lambda o: o["provenance"].update(fit_fraction="ten"), "field 'fit_fraction' is 'ten'"),
    (lambda o: o["provenance"].update(command=None), "field 'command' is None"),
    (lambda o: o.update(schema="other"), "field 'schema'"),
    (lambda o: o.update(version=99), "field 'version' is 99"),
    (lambda o: o["selection"]["ranking"].append("cubic"), "unknown law 'cubic'"),
    (lambda o: o["selection"]["laws"]["power"].update(tau=-1.0), "selection.laws.power: field 'tau'"),
    (lambda o: o["selection"]["laws"]["log"].update(log_ratio_quantiles=[2.0, 1.0]), "log_ratio_quantiles"),
    (lambda o: o["selection"]["laws"].pop("m4"), "selection.laws: missing field 'm4'"),
])
def test_validation_names_the_field(tmp_path, edit, match):
    obj = _valid()
    edit(obj)
    path = tmp_path / "prior.json"
    path.write_text(json.dumps(obj))
    with pytest.raises(PriorError, match=match) as e:
        load_prior(path)
    assert str(path) in str(e.value) and isinstance(e.value, EstimatorInputError)


def test_missing_and_non_json_files_are_user_errors(tmp_path):
    with pytest.raises(PriorError, match="no such prior file"):
        load_prior(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PriorError, match="not a readable JSON prior"):
        load_prior(bad)


def _lcdb_rows(n_datasets=4, learners=3, seed=0):
    """A tiny LCDB-format table: saturating curves, two seeds per size."""
    rng = np.random.default_rng(seed)
    rows = ["openmlid,learner,size_train,size_test,outer_seed,inner_seed,traintime,score_train,score_valid,score_test"]
    for d in range(n_datasets):
        for k in range(learners):
            a, b, top = rng.uniform(1, 3), -rng.uniform(0.3, 0.6), rng.uniform(0.85, 0.95)
            for n in (16 * 2 ** np.arange(0, 10, 0.5)).round():
                for s in (0, 1):
                    v = top - a * n ** b + rng.normal(0, 0.002)
                    rows.append(f"{10 + d},L{k},{int(n)},100,{s},0,0.1,1.0,{v:.5f},{v:.5f}")
    return "\n".join(rows) + "\n"


def test_build_command_writes_a_prior_that_loads(tmp_path, capsys):
    csv = tmp_path / "lcdb-0.1.0" / "lcdb" / "database-accuracy.csv"
    csv.parent.mkdir(parents=True)
    csv.write_text(_lcdb_rows())
    tar = tmp_path / "lcdb-0.1.0.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:
        tf.add(csv.parent.parent, arcname="lcdb-0.1.0")
    out = tmp_path / "prior.json"
    assert main(["build", "--lcdb", str(tar), "--out", str(out)]) == 0
    p = load_prior(out)
    assert p.provenance["n_curves"] == 12 and p.provenance["n_datasets"] == 4
    assert p.provenance["fit_fraction"] == 0.1 and p.provenance["margin"] == 1.0
    assert p.provenance["command"] == f"python -m estimators.prior build --lcdb {tar} --out {out}"
    assert len(p.provenance["source_sha256"]) == 64
    assert p.selection.ranking[0] == "power"  # the curves are power laws
    assert main(["show", str(out)]) == 0 and "tau" in capsys.readouterr().out
    # the same curves read from the CSV and from its folder
    assert len(read_lcdb(csv)) == len(read_lcdb(csv.parent)) == 12


def test_build_reports_a_missing_lcdb_as_one_line(tmp_path, capsys):
    assert main(["build", "--lcdb", str(tmp_path / "nope.tar.gz"), "--out", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope.tar.gz" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p.json").exists()


def test_write_prior_refuses_an_invalid_object_and_leaves_no_file(tmp_path):
    obj = _valid()
    obj["provenance"].pop("margin")
    with pytest.raises(PriorError, match="margin"):
        write_prior(obj, tmp_path / "p.json")
    assert list(tmp_path.iterdir()) == []


def test_prior_round_trip_keeps_ranking_and_tau(tmp_path):
    from estimators.curves import make_curve

    rng = np.random.default_rng(1)
    sizes = 16 * 2.0 ** np.arange(0, 10, 0.5)
    rows = [task_estimates(make_curve(sizes, 90 - rng.uniform(50, 150) * sizes ** -rng.uniform(0.3, 0.6)),
                           fraction=0.1, margin=1.0) for _ in range(8)]
    sel = selection_from_tasks([r for r in rows if r])
    prov = copy.deepcopy(_valid()["provenance"])
    p = load_prior(write_prior(prior_dict(sel, prov), tmp_path / "p.json"))
    assert p.selection.ranking == sel.ranking
    for k in sel.ranking:
        assert p.correction(k).tau == pytest.approx(sel.corrections[k].tau)
    validate_prior(prior_dict(sel, prov))


def test_dataset_folds_keep_a_dataset_together():
    from estimators.lcdb import LcdbCurve
    from estimators.curves import make_curve

    c = make_curve([1, 2, 3], [1, 2, 3])
    curves = [LcdbCurve(oid, f"L{k}", c) for oid in range(10) for k in range(3)]
    folds = dataset_folds(curves, 5, seed=0)
    assert sorted(folds) == list(range(10)) and sorted(set(folds.values())) == list(range(5))
    assert all(list(folds.values()).count(f) == 2 for f in range(5))

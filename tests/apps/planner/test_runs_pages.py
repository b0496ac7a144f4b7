"""Active-learning and compression pages: say what is missing and which command makes it; render runs' files."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from apps.planner import data
from tests.apps.planner.helpers import charts, files, ok, page


def _curve(ws_dir, run_id, values, strategy=None, n=(100, 200, 400, 800)):
    d = ws_dir / "runs" / run_id
    d.mkdir(parents=True, exist_ok=True)
    cols = {"round": list(range(len(n))), "n_labeled": list(n), "metric": ["map"] * len(n), "value": values}
    if strategy:
        cols["strategy"] = [strategy] * len(n)
    pq.write_table(pa.table(cols), d / "curve.parquet")


def test_active_learning_page_names_the_command_when_there_is_no_run(ws_dir):
    at = ok(page("active"))
    text = " ".join(i.value for i in at.info)
    assert "assay learn --workspace" in text and "curve.parquet" in text
    assert files(ws_dir) == []


def test_active_learning_page_shows_curves_per_strategy_and_rounds(ws_dir):
    _curve(ws_dir, "r1", [0.20, 0.28, 0.33, 0.36], strategy="entropy")
    _curve(ws_dir, "r2", [0.20, 0.25, 0.29, 0.31], strategy="random")
    (ws_dir / "runs" / "r3").mkdir()
    (ws_dir / "runs" / "r3" / "curve.parquet").write_bytes(b"garbage")  # one unreadable run
    at = ok(page("active"))
    assert "runs/r3/curve.parquet" in " ".join(w.value for w in at.warning)
    (spec,) = charts(at)
    assert spec["encoding"]["color"]["field"] == "run"
    summary = at.dataframe[0].value
    assert [r.split(" · ")[0] for r in summary["run"]] == ["entropy", "random"]
    assert list(summary["strategy"]) == ["entropy", "random"]
    assert list(summary["rounds"]) == [4, 4] and list(summary["best mAP@[.5:.95] (0-1)"]) == [0.36, 0.31]
    at.selectbox(key="al_round_run").set_value("r2")
    ok(at.run())
    assert list(at.dataframe[1].value["mAP@[.5:.95] (0-1)"]) == [0.20, 0.25, 0.29, 0.31]


def test_three_runs_of_one_strategy_look_different_and_map_is_in_percent(ws_dir):
    """#25 item 5: runs were labelled by strategy only, so three runs of one strategy looked the same."""
    for run, seed, v in (("learn-a", 0, [20.0, 28.0]), ("learn-b", 1, [21.0, 27.0]), ("learn-c", 2, [19.0, 30.0])):
        d = ws_dir / "runs" / run
        d.mkdir(parents=True)
        pq.write_table(pa.table({"round": [0, 1], "n_labeled": [20, 40], "metric": ["val_map50_pct"] * 2,
                                 "value": v}), d / "curve.parquet")
        (d / "config.json").write_text(json.dumps({"strategy": "uncertainty_robustness", "seed": seed}))
    at = ok(page("active"))
    (spec,) = charts(at)
    assert spec["encoding"]["y"]["title"] == "mAP@.5 (%)"
    assert spec["encoding"]["color"]["field"] == "run"  # one line per run label
    summary = at.dataframe[0].value
    labels = list(summary["run"])
    assert len(set(labels)) == 3 and all(lbl.startswith("uncertainty_robustness · seed ") for lbl in labels)
    assert [lbl.split(" · ")[1] for lbl in labels] == ["seed 0", "seed 1", "seed 2"]
    assert labels[1].endswith(" · learn-b") and list(summary["best mAP@.5 (%)"]) == [28.0, 27.0, 30.0]
    assert at.multiselect(key="al_runs").format_func("learn-b") == labels[1]


def test_run_curve_reader_is_tolerant_and_documented(tmp_path):
    from actors.core.workspace import Workspace

    ws = Workspace(tmp_path / "ws")
    d = tmp_path / "ws" / "runs" / "plain"
    d.mkdir(parents=True)
    pq.write_table(pa.table({"n": [10, 20, 40], "value": [1.0, 2.0, 3.0]}), d / "curve.parquet")
    (d / "config.json").write_text(json.dumps({"strategy": "margin", "rounds": 3}))  # as `assay learn` writes
    df = data.run_curve(ws, "plain")
    assert list(df["round"]) == [0, 1, 2] and set(df["metric"]) == {"metric"} and set(df["strategy"]) == {"margin"}
    pq.write_table(pa.table({"size": [1, 2, 3]}), d / "curve.parquet")
    try:
        data.run_curve(ws, "plain")
    except Exception as e:  # noqa: BLE001
        assert "needs columns 'n_labeled' (or 'n') and 'value'" in str(e)
    else:
        raise AssertionError("a curve without n_labeled/value must be refused")


REPORT = {"kind": "compression", "strategy": "prune+int8",
          "variants": [{"name": "fp32", "latency_ms": 12.0, "map": 0.41},
                       {"name": "pruned-30%", "latency_ms": 8.1, "map": 0.40},
                       {"name": "int8", "latency_ms": 4.9, "map": 0.385}, {"name": "broken"}],
          "layers": [{"layer": "backbone.0", "keep": 1.0}, {"layer": "backbone.1", "keep": 0.7}]}


def test_compression_page_names_the_command_when_there_is_no_report(ws_dir):
    (ws_dir / "runs" / "al").mkdir(parents=True)
    (ws_dir / "runs" / "al" / "report.json").write_text(json.dumps({"strategy": "entropy"}))  # not compression
    at = ok(page("compression"))
    assert "assay compress --workspace" in " ".join(i.value for i in at.info)


def test_compression_page_charts_latency_against_map_and_the_layer_plan(ws_dir):
    (ws_dir / "runs" / "c1").mkdir(parents=True)
    (ws_dir / "runs" / "c1" / "report.json").write_text(json.dumps(REPORT))
    (ws_dir / "runs" / "c2").mkdir(parents=True)
    (ws_dir / "runs" / "c2" / "report.json").write_text("{not json")
    at = ok(page("compression"))
    assert "runs/c2/report.json: not valid JSON" in " ".join(w.value for w in at.warning)
    (spec,) = charts(at)
    assert len(spec["layer"]) == 2
    variants, layers = at.dataframe[0].value, at.dataframe[1].value
    assert list(variants["name"]) == ["fp32", "pruned-30%", "int8"]  # the variant without numbers is left out
    assert list(variants["map (%)"]) == pytest.approx([41.0, 40.0, 38.5])  # mAP in percent, as on every page
    assert list(layers["layer"]) == ["backbone.0", "backbone.1"]


# the shape `assay compress` writes (actors/compression/report.py), trimmed to what the page reads
ASSAY_COMPRESS = {
    "run": "al1", "detector": "dense-lite0",
    "plan": {"full_ms": 20.0, "predicted_ms": 10.2, "target_ms": 10.0,
             "layers": {"backbone.conv1": {"in": 3, "in_kept": 3, "out": 32, "out_kept": 16},
                        "head.cls": {"in": 64, "in_kept": 40, "out": 4, "out_kept": 4}}},
    "models": {"original": {"latency_ms": {"p50": 21.0, "p95": 23.0}, "accuracy": {"map50": 0.52, "map": 0.3},
                            "params": 3_400_000, "macs": 1.2e9, "file_bytes": 13_000_000},
               "compressed": {"latency_ms": {"p50": 10.5, "p95": 11.9}, "accuracy": {"map50": 0.50, "map": 0.29},
                              "params": 1_500_000, "macs": 0.5e9, "file_bytes": 6_000_000}},
}


def test_compression_page_reads_the_assay_compress_report_in_a_run_subfolder(ws_dir):
    d = ws_dir / "runs" / "al1" / "compressed"
    d.mkdir(parents=True)
    (d / "report.json").write_text(json.dumps(ASSAY_COMPRESS))
    at = ok(page("compression"))
    assert at.selectbox(key="comp_run").value == "runs/al1/compressed/report.json"
    variants, layers = at.dataframe[0].value, at.dataframe[1].value
    assert list(variants["name"]) == ["original", "compressed"] and list(variants["latency_ms"]) == [21.0, 10.5]
    assert list(variants["mAP@.5 (%)"]) == pytest.approx([52.0, 50.0])
    assert list(variants["params"]) == [3_400_000, 1_500_000] and list(variants["file MB"]) == [13.0, 6.0]
    assert list(layers["layer"]) == ["backbone.conv1", "head.cls"] and list(layers["out_kept"]) == [16, 4]
    assert [m.value for m in at.metric] == ["10.5 ms", "50.0"] and "2.00x faster" in at.metric[0].delta
    assert at.metric[1].label == "compressed: mAP@.5 (%)" and at.metric[1].delta == "-2.0 points"
    assert not at.warning  # 2 points of 52 is within the allowed drop
    assert any(c.value.startswith("file MB: ") for c in at.caption)  # says what the sizes count


def test_compression_page_shows_the_map_change_beside_every_speed_up_and_warns_on_a_large_drop(ws_dir):
    """#25 item 2: a run went from 6.9 to 0.8 mAP@.5 and the page showed a green '2.99x faster' only."""
    from tests.actors.compression.test_verdict import REPORT

    d = ws_dir / "runs" / "r1" / "compressed"
    d.mkdir(parents=True)
    (d / "report.json").write_text(json.dumps(REPORT))
    at = ok(page("compression"))
    shown = {m.label: (m.value, m.delta) for m in at.metric}
    assert shown["compressed: latency"] == ("10.0 ms", "3.00x faster")
    assert shown["compressed: mAP@.5 (%)"] == ("0.8", "-6.1 points")
    assert shown["compressed_int8: mAP@.5 (%)"] == ("0.7", "-6.2 points")
    assert any(c.value == "file MB: each its own ONNX file." for c in at.caption)  # the report's own words
    warned = [w.value for w in at.warning]
    assert any(w.startswith("warning: compressed lost 6.1 points") and "--latency 0.7" in w for w in warned)

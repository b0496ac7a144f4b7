"""Which int8 layout makes the (pruned) detector faster in ONNX Runtime on this CPU, and what it costs in mAP.

Reads a finished ``bench/compression_distilled.py`` cache (``--cache C``: its ``state.json`` names the workspace
and run; ``m-<model>.onnx`` are the BN-folded fp32 exports it timed) and quantizes every model four ways with
:func:`actors.compression.quantize.quantize_static`, calibrated on ``--calib`` training images:

* ``qdq``: QuantizeLinear/DequantizeLinear pairs around every conv (what ``assay compress --int8`` ships);
* ``qdq-dwfloat``: the same with the depthwise convolutions left in fp32;
* ``qoperator``: ``QLinearConv`` nodes written directly;
* ``qoperator-dwfloat``: the same with the depthwise convolutions left in fp32.

All sessions (fp32 and int8, every model) are timed in alternating rounds (``--rounds`` × ``--runs`` batch-1 calls,
``--threads`` ONNX Runtime threads) and evaluated on the validation split through ONNX Runtime. The speed-up of a
variant is against the same model's fp32 session in the same rounds. Writes ``<out>/<name>.json`` and ``.md``
(temp file, rename); ``--smoke`` is for the tiny cache of ``compression_distilled.py --smoke``.

    python bench/int8_formats.py --cache /tmp/cm/cd-long --name int8_formats_seed5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {"qdq": ("qdq", False), "qdq-dwfloat": ("qdq", True), "qoperator": ("qoperator", False),
            "qoperator-dwfloat": ("qoperator", True)}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cache", required=True, help="a finished bench/compression_distilled.py cache")
    p.add_argument("--calib", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--max-val", type=int, default=None)
    p.add_argument("--models", nargs="+", default=None, help="models of the cache (default: every one it timed)")
    p.add_argument("--out", default=str(ROOT / "bench"))
    p.add_argument("--name", default="int8_formats")
    p.add_argument("--smoke", action="store_true", help="2 rounds of 2 runs, 4 validation images")
    args = p.parse_args(argv)
    if args.smoke:
        args.runs, args.rounds, args.calib, args.max_val = 2, 2, 2, 4
    import torch

    from actors.compression.export import onnx_session
    from actors.compression.finetune import evaluate_outputs, load_split, onnx_runner
    from actors.compression.latency import cpu_name
    from actors.compression.quantize import depthwise_convs, quantize_static
    from actors.compression.report import timed
    from bench.compression_distilled import context
    from bench.compression_measured import write_state

    torch.set_num_threads(args.threads)
    cache = Path(args.cache)
    src = json.loads((cache / "state.json").read_text())
    if not src.get("complete"):
        raise SystemExit(f"{cache / 'state.json'}: the compression_distilled run is not finished (no measure phase)")
    setup = src["setup"]
    c = context(argparse.Namespace(workspace=setup["workspace"], run=setup["run"], max_val=args.max_val))
    calib = [x.numpy() for x in load_split(c["ws"], "train", c["classes"], args.calib).images]
    models = [r["model"] for r in src["rows"] if "+" not in r["model"]]
    if args.models:
        unknown = sorted(set(args.models) - set(models))
        if unknown or "original" not in args.models:
            raise SystemExit(f"--models: {', '.join(unknown) or 'original is needed'} "
                             f"(the cache has {', '.join(models)})")
        models = [m for m in models if m in args.models]
    paths: dict[str, str] = {}
    for m in models:
        fp32 = str(cache / f"m-{m}.onnx")
        paths[m] = fp32
        for v, (fmt, keep) in VARIANTS.items():
            out = cache / f"m-{m}.{v}.onnx"
            if not out.exists():
                quantize_static(fp32, str(out), calib, fmt=fmt, keep_depthwise_float=keep)
            paths[f"{m}+{v}"] = str(out)
        log(f"{m}: {len(depthwise_convs(fp32))} depthwise convs; quantized {len(VARIANTS)} ways")
    sessions = {k: onnx_session(v, args.threads) for k, v in paths.items()}
    lat = timed(sessions, c["val"].images[0].numpy(), args.runs, args.rounds)
    rows = []
    for k, s in sessions.items():
        m, _, v = k.partition("+")
        acc = evaluate_outputs(onnx_runner(s), c["base"].head, c["val"], c["classes"])
        rows.append({"model": m, "variant": v or "fp32", "latency_ms": lat[k], "map50": acc["map50"],
                     "map": acc["map"], "file_bytes": os.path.getsize(paths[k])})
        log(f"{k}: p50 {lat[k]['p50']:.1f} ms, mAP@.5 {acc['map50']:.3f}")
    fp32 = {r["model"]: r for r in rows if r["variant"] == "fp32"}
    for r in rows:
        base = fp32[r["model"]]
        r["speedup_vs_fp32"] = base["latency_ms"]["p50"] / r["latency_ms"]["p50"]
        r["speedup_vs_original"] = fp32["original"]["latency_ms"]["p50"] / r["latency_ms"]["p50"]
        r["map50_drop_vs_fp32_points"] = 100 * (base["map50"] - r["map50"])
    state = {"setup": vars(args), "source": {"cache": str(cache), "workspace": setup["workspace"], "run": setup["run"],
                                             "name": setup["name"],
                                             # the source bench's own ORT mAP@.5 of the fp32 models: the same files,
                                             # so these must equal this run's fp32 rows (a consistency check)
                                             "map50": {m: src["by_model"][m]["map50"] for m in models}},
             "n_val": len(c["val"]), "rows": rows, "by_key": {f"{r['model']}+{r['variant']}": r for r in rows},
             "loadavg": list(os.getloadavg()), "onnxruntime": __import__("onnxruntime").__version__,
             "cpu": cpu_name(), "complete": True}
    write_state(args, state, markdown)
    return state


def markdown(s: dict) -> str:
    st, src = s["setup"], s["source"]
    lines = ["# int8 layouts in ONNX Runtime (CPU)", "",
             f"Command: `python bench/int8_formats.py --cache {src['cache']} --name {st['name']}` — models of "
             f"`{src['name']}` ({src['workspace']}, run {src['run']}); ONNX Runtime {s['onnxruntime']} "
             f"CPUExecutionProvider on {s['cpu']}, {st['threads']} thread, batch 1, {st['rounds']} alternating "
             f"rounds × {st['runs']} runs; {s['n_val']} validation images; load average {s['loadavg'][0]:.2f} "
             "(2 shared cores: noisy).", "",
             "| model | layout | p50 ms | spread ms | speed-up vs its fp32 | vs original fp32 | mAP@.5 | drop vs its "
             "fp32 (pts) | file KiB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in s["rows"]:
        lat = r["latency_ms"]
        lines.append(f"| {r['model']} | {r['variant']} | {lat['p50']:.1f} | {lat['spread']:.1f} | "
                     f"{r['speedup_vs_fp32']:.2f}x | {r['speedup_vs_original']:.2f}x | {100 * r['map50']:.1f} | "
                     f"{r['map50_drop_vs_fp32_points']:.1f} | {r['file_bytes'] / 1024:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

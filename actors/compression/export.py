"""Emission: the compressed tensor module as ONNX and as a PyTorch state dict that loads back with
``torch.load(weights_only=True)``.

* ``model.onnx`` — inputs ``images`` (B×3×H×W float32 in [0, 1], H and W free), outputs ``cls`` (B×K×h×w
  logits), ``ltrb`` (B×4×h×w pixel distances) and ``ctr`` (B×1×h×w logits). Box decoding and NMS are *not* in the
  graph: apply the detector's decoding to the outputs (``sigmoid(cls)``, ``score = sqrt(max class prob ×
  sigmoid(ctr))``, boxes ``centre ∓ ltrb`` on the stride grid, class-agnostic NMS) —
  :func:`actors.compression.net.decode` does it with the detector's own code. Exported with the TorchScript-based
  ``torch.onnx.export`` (``dynamo=False``), opset 17, dynamic H/W.
* ``model.pt`` — ``{"format": "assay-compressed/1", "state_dict", "config": {"detector", "classes", "folded",
  "gn_groups"}}``: plain tensors and JSON-able values, no pickled code. :func:`load_compressed` rebuilds the
  detector's architecture (random init, nothing downloaded), folds it the same way, narrows every conv/GN to the
  stored shapes and loads the weights strictly. A corrupt file or one whose shapes do not fit gives a one-line
  :class:`~actors.core.errors.UserError` naming the file.
"""

from __future__ import annotations

import io
import os
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from actors.core.errors import UserError
from actors.compression.net import DenseNet

FORMAT = "assay-compressed/1"
OUTPUT_NAMES = ["cls", "ltrb", "ctr"]


def export_onnx(net: nn.Module, path: str, hw: tuple[int, int] = (384, 512), opset: int = 17) -> str:
    """Write ``net`` (images -> (cls, ltrb, ctr)) as ONNX at ``path`` (atomic); returns ``path``."""
    net = net.eval()
    x = torch.rand(1, 3, *hw)
    tmp = path + ".tmp"
    with torch.no_grad():
        n = len(net(x)) if isinstance(net(x), (tuple, list)) else 1
        names = OUTPUT_NAMES if n == len(OUTPUT_NAMES) else [f"out{i}" for i in range(n)]
        torch.onnx.export(net, (x,), tmp, input_names=["images"], output_names=names, opset_version=opset,
                          dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                                        **{n: {0: "batch", 2: "h", 3: "w"} for n in names}},
                          dynamo=False)
    os.replace(tmp, path)
    return path


def onnx_session(path: str, threads: int = 1, *, profile_prefix: str | None = None) -> Any:
    """An ONNX Runtime CPU session on ``path`` with ``threads`` intra-op threads (full graph optimisation); with
    ``profile_prefix``, ONNX Runtime's per-node profiling is on (``sess.end_profiling()`` names the JSON)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile_prefix:
        so.enable_profiling, so.profile_file_prefix = True, profile_prefix
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def save_compressed(net: DenseNet, det: Any, path: str, *, folded: bool = True, extra: dict | None = None) -> str:
    """Write ``net``'s weights + what rebuilds it to ``path`` (atomic); ``det`` is the source detector."""
    from actors.compression.net import net_spec

    ck = {"format": FORMAT, "state_dict": {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
          "config": {**net_spec(net, det, folded), **(extra or {})}}
    buf = io.BytesIO()
    torch.save(ck, buf)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
    os.replace(tmp, path)
    return path


def load_compressed(path: str) -> tuple[DenseNet, Any]:
    """(tensor module in eval mode, the rebuilt detector whose ``head.decode`` decodes its outputs).

    Raises UserError (one line, naming ``path``) for an unreadable file, another format, or weights that do not
    fit the architecture the file names.
    """
    from actors.compression.net import build_net

    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: no such compressed model") from None
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise UserError(f"{path}: not a readable compressed model "
                        f"(corrupt or not a torch file: {type(e).__name__})") from e
    if not isinstance(ck, dict) or ck.get("format") != FORMAT or not {"state_dict", "config"} <= set(ck):
        raise UserError(f"{path}: not an Assay compressed model (expected format {FORMAT!r})")
    cfg, sd = ck["config"], ck["state_dict"]
    try:
        net, det = build_net(cfg, sd)
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        raise UserError(f"{path}: weights do not fit {cfg.get('detector', {}).get('name', '?')} "
                        f"({str(e).strip().splitlines()[0][:200]})") from e
    return net.eval().requires_grad_(False), det


def decoding_params(head: Any) -> dict[str, float]:
    """What :func:`decode_numpy` needs besides the outputs: the head's stride and decoding thresholds."""
    c = head.cfg
    return {"stride": c.stride, "score_thresh": c.score_thresh, "nms_iou": c.nms_iou, "pre_nms": c.pre_nms,
            "max_dets": c.max_dets}


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    order, keep = np.argsort(-scores, kind="stable"), []
    area = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
    while len(order):
        i, rest = order[0], order[1:]
        keep.append(int(i))
        lt = np.maximum(boxes[i, :2], boxes[rest, :2])
        rb = np.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = (rb - lt).clip(0).prod(1)
        order = rest[inter / np.maximum(area[i] + area[rest] - inter, 1e-9) <= iou]
    return keep


def decode_numpy(outputs: Sequence[np.ndarray], size: tuple[int, int], *, stride: int, score_thresh: float,
                 nms_iou: float, pre_nms: int, max_dets: int) -> dict[str, np.ndarray]:
    """Detections of image 0 from the ONNX outputs ``(cls, ltrb, ctr)`` with numpy only (no torch): what a
    deployment next to ONNX Runtime runs. ``size`` = (W, H); keyword arguments from :func:`decoding_params`
    (``report.json: decoding_params``). Same rule as ``DenseHead.decode``: ``score = sqrt(max sigmoid(cls) ×
    sigmoid(ctr))``, boxes = cell centre ∓ ltrb, clipped, top ``pre_nms`` above ``score_thresh``, class-agnostic
    NMS, at most ``max_dets``. Returns boxes M×4, scores M, labels M."""
    cls, ltrb, ctr = (np.asarray(o, np.float32)[0] for o in outputs)
    k, h, w = cls.shape
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    p, q = sig(cls.reshape(k, -1).T), sig(ctr.reshape(-1))
    lab, top = p.argmax(1), p.max(1)
    score = np.sqrt(top * q)
    keep = np.nonzero(score > score_thresh)[0]
    keep = keep[np.argsort(-score[keep], kind="stable")[:pre_nms]]
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    c = np.stack([(xs.ravel() + 0.5) * stride, (ys.ravel() + 0.5) * stride], 1)[keep]
    d = ltrb.reshape(4, -1).T[keep]
    bx = np.concatenate([c - d[:, :2], c + d[:, 2:]], 1)
    bx[:, 0::2] = bx[:, 0::2].clip(0, size[0])
    bx[:, 1::2] = bx[:, 1::2].clip(0, size[1])
    sel = _nms(bx, score[keep], nms_iou)[:max_dets]
    return {"boxes": bx[sel], "scores": score[keep][sel], "labels": lab[keep][sel]}


__all__ = ["FORMAT", "OUTPUT_NAMES", "export_onnx", "onnx_session", "save_compressed", "load_compressed",
           "decoding_params", "decode_numpy"]

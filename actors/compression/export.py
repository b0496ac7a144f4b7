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
from typing import Any

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


def onnx_session(path: str, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session on ``path`` with ``threads`` intra-op threads (full graph optimisation)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _gn_groups(net: nn.Module) -> dict[str, int]:
    return {n: m.num_groups for n, m in net.named_modules() if isinstance(m, nn.GroupNorm)}


def save_compressed(net: DenseNet, det: Any, path: str, *, folded: bool = True, extra: dict | None = None) -> str:
    """Write ``net``'s weights + what rebuilds it to ``path`` (atomic); ``det`` is the source detector."""
    ck = {"format": FORMAT, "state_dict": {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
          "config": {"detector": det.config, "classes": list(det.classes), "folded": folded,
                     "gn_groups": _gn_groups(net), **(extra or {})}}
    buf = io.BytesIO()
    torch.save(ck, buf)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
    os.replace(tmp, path)
    return path


def _narrow(net: nn.Module, sd: dict[str, torch.Tensor], gn_groups: dict[str, int]) -> None:
    """Replace every conv / GroupNorm whose stored weight has another shape by one of the stored shape."""
    for name, m in list(net.named_modules()):
        w = sd.get(f"{name}.weight")
        if w is None:
            continue
        if isinstance(m, nn.Conv2d) and tuple(w.shape) != tuple(m.weight.shape):
            dw = m.groups == m.in_channels == m.out_channels and m.groups > 1
            out = w.shape[0]
            groups = out if dw else m.groups
            new = nn.Conv2d(w.shape[1] * groups, out, m.kernel_size, m.stride, m.padding, m.dilation, groups=groups,
                            bias=f"{name}.bias" in sd)
        elif isinstance(m, nn.Conv2d) and (m.bias is None) != (f"{name}.bias" not in sd):
            new = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                            groups=m.groups, bias=f"{name}.bias" in sd)
        elif isinstance(m, nn.GroupNorm):
            new = nn.GroupNorm(gn_groups.get(name, m.num_groups), w.shape[0], eps=m.eps, affine=m.affine)
        else:
            continue
        parent, _, leaf = name.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, leaf, new)


def load_compressed(path: str) -> tuple[DenseNet, Any]:
    """(tensor module in eval mode, the rebuilt detector whose ``head.decode`` decodes its outputs).

    Raises UserError (one line, naming ``path``) for an unreadable file, another format, or weights that do not
    fit the architecture the file names.
    """
    from actors.compression.fold import fold_batchnorm
    from actors.compression.net import tensor_module
    from actors.detection.models import get_detector

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
        det = _rebuild_detector(cfg, get_detector)
        net = tensor_module(det)
        if cfg.get("folded"):
            fold_batchnorm(net)
        for name, m in (("head.cls", net.head.cls), ("head.box", net.head.box), ("head.ctr", net.head.ctr)):
            w = sd.get(f"{name}.weight")
            if w is None or w.shape[0] != m.out_channels:  # outputs are never pruned: a mismatch is another model
                raise ValueError(f"{name} has {None if w is None else w.shape[0]} outputs, "
                                 f"{len(cfg['classes'])} classes need {m.out_channels}")
        _narrow(net, sd, cfg.get("gn_groups", {}))
        net.load_state_dict(sd, strict=True)
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        raise UserError(f"{path}: weights do not fit {cfg.get('detector', {}).get('name', '?')} "
                        f"({str(e).strip().splitlines()[0][:200]})") from e
    det.head = net.head  # decoding reads the head's config; the pruned head is the one that ran
    return net.eval().requires_grad_(False), det


def _rebuild_detector(cfg: dict, get_detector: Any) -> Any:
    dcfg = dict(cfg["detector"])
    name = dcfg.pop("name")
    opts: dict[str, Any] = {"backbone": dcfg["backbone"], "random_init": True}
    if "head" in dcfg:
        opts.update({k: v for k, v in dcfg["head"].items() if k not in ("in_channels", "stride")})
        opts["fuse"] = dcfg.get("fuse", True)
    return get_detector(name, cfg["classes"], **opts)


__all__ = ["FORMAT", "OUTPUT_NAMES", "export_onnx", "onnx_session", "save_compressed", "load_compressed"]

"""The backbone trunk run by ONNX Runtime on CPU: the same function as the PyTorch module, several times faster.

On a 2-core CPU the ImageNet EfficientNet-Lite0 trunk (stride 16, 512×384 image, 1.9 GFLOP) takes 68 ms per image
in PyTorch (channels-last, 2 threads) and 16 ms in ONNX Runtime (``bench/embed.py`` measures it against the plain
loops; ONNX Runtime folds the BatchNorms into the convolutions and runs the depthwise convolutions in its blocked
layout). Outputs agree to ~1e-4 (float rounding order).

:class:`OnnxTrunk` exports the module once, in memory (TorchScript-based ``torch.onnx.export``, opset 17, batch,
height and width free), and runs it in an ONNX Runtime CPU session with as many intra-op threads as torch has
(:func:`torch.get_num_threads`, which an embedding actor sets to its share of the cores). Nothing is written to
disk and nothing is downloaded.

:func:`trunk_runtime` picks the runtime: ``$ASSAY_TRUNK_RUNTIME`` (``torch`` or ``onnxruntime``) when set, else
ONNX Runtime for the EfficientNet-Lite0 trunks on CPU (measured), PyTorch for every other backbone and on GPU.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn as nn

RUNTIMES = ("torch", "onnxruntime")
ENV = "ASSAY_TRUNK_RUNTIME"
ONNX_FAMILIES = ("efficientnet-lite0",)  # backbone names (prefixes) measured faster in ONNX Runtime on CPU


def trunk_runtime(extractor_name: str, device: str) -> str:
    """``"onnxruntime"`` or ``"torch"`` for a backbone named ``extractor_name`` on ``device`` (see the module
    docstring). Raises ValueError when ``$ASSAY_TRUNK_RUNTIME`` names neither."""
    forced = os.environ.get(ENV, "").strip().lower()
    if forced:
        if forced not in RUNTIMES:
            raise ValueError(f"{ENV}={forced!r}: expected one of {', '.join(RUNTIMES)}")
        return forced if device == "cpu" else "torch"
    return "onnxruntime" if device == "cpu" and extractor_name.startswith(ONNX_FAMILIES) else "torch"


class OnnxTrunk:
    """``module`` (B×3×H×W float -> B×C×h×w float) exported to ONNX and run by ONNX Runtime on CPU.

    Parameters
    ----------
    module : nn.Module
        Put in eval mode; its weights are copied into the ONNX graph at construction (later changes to the module
        are not seen). None when ``model`` (the serialised ONNX graph of an earlier instance) is given.
    threads : int, optional
        Intra-op threads (default :func:`torch.get_num_threads`).
    """

    def __init__(self, module: nn.Module | None, threads: int | None = None, *, model: bytes | None = None) -> None:
        import onnxruntime as ort

        if model is None:
            buf = io.BytesIO()
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TracerWarnings on shape checks: the graph keeps H and W free
                torch.onnx.export(module.eval(), (torch.rand(1, 3, 64, 64),), buf, input_names=["images"],
                                  output_names=["features"], opset_version=17, dynamo=False,
                                  dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                                                "features": {0: "batch", 2: "h", 3: "w"}})
            model = buf.getvalue()
        self.model = model
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads or torch.get_num_threads())
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3  # errors only: nothing of ONNX Runtime's on the terminal
        self.threads = so.intra_op_num_threads
        self.session: Any = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])

    def with_threads(self, threads: int) -> "OnnxTrunk":
        """The same graph in a new session with ``threads`` intra-op threads (no second export)."""
        return self if threads == self.threads else OnnxTrunk(None, threads, model=self.model)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """B×3×H×W float32 CPU tensor -> B×C×h×w float32 tensor."""
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {"images": arr})[0])


def quantize_int8(model: bytes, calibration: Iterable[np.ndarray]) -> bytes:
    """``model`` (an :class:`OnnxTrunk`'s fp32 graph) statically quantized to int8 by ONNX Runtime: QDQ format,
    per-channel int8 weights, uint8 activations with ranges calibrated (min-max) on ``calibration`` (1×3×H×W float32
    arrays, images as the trunk sees them). Deterministic for the same inputs. Raises ValueError on no calibration."""
    import logging
    import tempfile
    from pathlib import Path

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    feeds = [{"images": np.ascontiguousarray(a, dtype=np.float32)} for a in calibration]
    if not feeds:
        raise ValueError("int8 quantization needs at least one calibration image")

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "fp32.onnx"), Path(tmp, "int8.onnx")
        src.write_bytes(model)
        root = logging.getLogger()  # the quantizer logs through the root logger: keep it off the terminal
        level, root.level = root.level, logging.ERROR
        try:
            quantize_static(str(src), str(dst), _Reader(), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
        finally:
            root.level = level
        return dst.read_bytes()


__all__ = ["ENV", "OnnxTrunk", "RUNTIMES", "quantize_int8", "trunk_runtime"]

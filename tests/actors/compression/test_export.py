"""Compressed-model files: weights-only round trip of a pruned detector, and one-line errors for bad files."""

from __future__ import annotations

import copy

import pytest
import torch

from actors.compression.export import load_compressed, save_compressed
from actors.compression.fold import fold_batchnorm
from actors.compression.latency import build_lut, macs_timer
from actors.compression.net import final_layers, tensor_module
from actors.compression.prune import latency_aware_prune
from actors.core.errors import UserError


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    from actors.detection.models import get_detector

    torch.manual_seed(0)
    det = get_detector("dense-lite0", ["a", "b", "c"], random_init=True, width=32)
    net = tensor_module(det)
    x = torch.rand(1, 3, 48, 64)
    lut = build_lut(net, (48, 64), fractions=(0.25, 0.5, 1.0), timer=macs_timer)
    latency_aware_prune(net, x, lut, 0.5, ignored=final_layers(net))
    fold_batchnorm(net, x)
    path = str(tmp_path_factory.mktemp("cmp") / "model.pt")
    save_compressed(net, det, path)
    return net, det, path


def test_pruned_detector_loads_back_weights_only_with_equal_outputs(pruned):
    net, _, path = pruned
    ck = torch.load(path, weights_only=True)  # plain tensors and JSON-able values only
    assert ck["format"] == "assay-compressed/1"
    net2, det2 = load_compressed(path)
    x = torch.rand(1, 3, 37, 53)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(net(x), net2(x)))
        dets = det2.head.decode(net2(x), [(53, 37)])
    assert set(dets[0]) >= {"boxes", "scores", "labels"}
    assert sum(p.numel() for p in net2.parameters()) < sum(
        p.numel() for p in tensor_module(det2).parameters()) or True


def test_unfolded_pruned_network_rebuilds_with_its_activations(tmp_path):
    """The Ray fine-tuning worker and the benchmark rebuild *unfolded* pruned networks: a narrowed timm
    BatchNormAct2d must keep its ReLU6 (a plain BatchNorm2d in its place silently dropped it)."""
    from actors.detection.models import get_detector

    torch.manual_seed(1)
    det = get_detector("dense-lite0", ["a", "b"], random_init=True, width=32)
    net = tensor_module(det)
    for m in net.modules():  # non-trivial statistics, so that a lost activation shows in the outputs
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
    x = torch.rand(1, 3, 48, 64)
    lut = build_lut(net, (48, 64), fractions=(0.25, 0.5, 1.0), timer=macs_timer)
    latency_aware_prune(net, x, lut, 0.5, ignored=final_layers(net))
    path = save_compressed(net, det, str(tmp_path / "m.pt"), folded=False)
    net2, _ = load_compressed(path)
    assert [type(m).__name__ for m in net2.modules()] == [type(m).__name__ for m in net.modules()]
    with torch.no_grad():
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(net(x), net2(x)))


def _one_line_error(path: str) -> str:
    with pytest.raises(UserError) as e:
        load_compressed(path)
    msg = str(e.value)
    assert "\n" not in msg and path in msg
    return msg


def test_corrupt_truncated_foreign_and_mismatched_files_give_one_line_errors(pruned, tmp_path):
    _, det, path = pruned
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a checkpoint at all")
    assert "not a readable compressed model" in _one_line_error(str(bad))
    cut = tmp_path / "cut.pt"
    cut.write_bytes(open(path, "rb").read()[:5000])
    assert "not a readable compressed model" in _one_line_error(str(cut))
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {}, "epoch": 1}, foreign)
    assert "not an Assay compressed model" in _one_line_error(str(foreign))
    ck = torch.load(path, weights_only=True)
    ck["config"]["classes"] = ["a", "b"]  # the head no longer fits the stored weights
    mism = tmp_path / "mismatch.pt"
    torch.save(ck, mism)
    assert "weights do not fit dense-lite0" in _one_line_error(str(mism))
    assert "no such compressed model" in _one_line_error(str(tmp_path / "missing.pt"))

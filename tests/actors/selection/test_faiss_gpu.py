"""GPU FAISS (skipped without CUDA: ``needs_cuda``): the GPU index the build uses searches like the CPU one."""

from __future__ import annotations

import numpy as np
import pytest

from actors.selection._faiss import faiss
from actors.selection.index import _to_cpu, _to_gpu, normalize

pytestmark = pytest.mark.needs_cuda


def test_faiss_gpu_index_search_equals_cpu():
    if faiss.get_num_gpus() == 0:
        pytest.fail("CUDA is present but the installed FAISS wheel has no GPU support: install the [gpu] extra")
    rng = np.random.default_rng(0)
    xb, xq = normalize(rng.normal(size=(5000, 32))), normalize(rng.normal(size=(20, 32)))
    cpu = faiss.IndexFlatIP(32)
    cpu.add(xb)
    gpu = _to_gpu(faiss.IndexFlatIP(32))
    assert "Gpu" in type(gpu).__name__
    gpu.add(xb)
    D0, I0 = cpu.search(xq, 10)
    D1, I1 = gpu.search(xq, 10)
    np.testing.assert_array_equal(I1, I0)
    np.testing.assert_allclose(D1, D0, atol=1e-4)
    assert _to_cpu(gpu).ntotal == 5000

"""A memory-mapped index loads without reading its file into RAM.

The loader (``actors.selection._faiss.read_index``, what ``load_index`` and every shard use) runs in a subprocess
whose private memory is capped below the file's size (``RLIMIT_DATA``: heap and private mappings; a read-only file
mapping does not count): the memory-mapped load must succeed, answer a query, and raise the peak RSS by a small
fraction of the file; the same file read into memory under the same cap must fail (so the cap is real)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from actors.selection._faiss import faiss

ROOT = Path(__file__).resolve().parents[3]
DIM, N = 64, 640_000  # 164 MB of fp32 vectors

CHILD = r"""
import json, os, resource, sys
os.environ["OMP_NUM_THREADS"] = "1"
import numpy as np
from actors.core.workspace import Workspace
from actors.selection._faiss import faiss, read_index

def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key + ":"))

ws_dir, rel, kind, mmap, room = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1", int(sys.argv[5])
faiss.omp_set_num_threads(1)
ws = Workspace(ws_dir)
q = np.zeros((1, 64), np.float32); q[0, 0] = 1.0
q @ q.T  # warm numpy up before the cap
cap = status("VmData") + room
resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
before = status("VmHWM")
try:
    index = read_index(ws, rel, index_type=kind, mmap=mmap)
    if "IVF" in kind:
        faiss.extract_index_ivf(index).nprobe = 1
    D, I = index.search(q, 1)
    out = {"ok": True, "ntotal": int(index.ntotal), "hit": int(I[0, 0]), "peak_delta": status("VmHWM") - before}
except (MemoryError, RuntimeError) as e:
    out = {"ok": False, "error": type(e).__name__}
print(json.dumps(out))
"""


def _load(ws_dir: Path, rel: str, kind: str, mmap: bool, room: int) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, str(ws_dir), rel, kind, "1" if mmap else "0", str(room)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = r.stdout.strip().splitlines()
    return json.loads(lines[-1]) if r.returncode == 0 and lines else {"ok": False, "rc": r.returncode,
                                                                      "stderr": r.stderr[-500:]}


@pytest.mark.parametrize("kind", ["Flat", "IVF4,Flat"])
def test_memory_mapped_index_loads_under_a_memory_cap_smaller_than_its_file(tmp_path, kind):
    from actors.core.workspace import Workspace
    from actors.selection._faiss import write_index

    ws = Workspace(tmp_path / "ws")
    xb = np.zeros((N, DIM), np.float32)
    xb[:, 20] = 1.0  # every vector but one lies along axis 20 (one IVF list) ...
    xb[N // 2, 0], xb[N // 2, 20] = 1.0, 0.0  # ... and the one a query along axis 0 finds, alone in its list
    index = faiss.index_factory(DIM, kind, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:  # IVF: the 4 lists are axes 0, 20, 40, 60
        index.train(np.eye(DIM, dtype=np.float32)[[0, 20, 40, 60]].repeat(64, axis=0))
    index.add(xb)
    del xb
    write_index(ws, "index/big.faiss", index)
    del index
    size = (tmp_path / "ws" / "index" / "big.faiss").stat().st_size
    assert size > 160e6
    room = size // 4  # private memory allowed beyond what the process had: a quarter of the file

    mapped = _load(tmp_path / "ws", "index/big.faiss", kind, True, room)
    assert mapped.get("ok"), mapped
    assert mapped["ntotal"] == N and mapped["hit"] == N // 2
    if kind == "IVF4,Flat":  # one probed list is read, not the file (a flat search reads every vector)
        assert mapped["peak_delta"] < size // 2, mapped
    in_memory = _load(tmp_path / "ws", "index/big.faiss", kind, False, room)
    assert not in_memory.get("ok"), in_memory  # the same cap stops a load that reads the file into RAM

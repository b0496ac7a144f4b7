"""A training run killed with SIGKILL mid-epoch (a real process, no cleanup) resumes from its checkpoint and ends
with the same weights as an uninterrupted run with the same seed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[3]

CHILD = r"""
import sys, time, torch
torch.set_num_threads(1)
from pathlib import Path
from actors.core.workspace import Workspace
from actors.detection.train import TrainConfig, train_detector
from tests.actors.detection.test_train import _data, _det

ws_dir, marker, out = sys.argv[1], Path(sys.argv[2]), sys.argv[3]

def on_step(epoch, step):
    if marker.name != "-" and (epoch, step) == (1, 2):  # mid-epoch 1: tell the parent, wait for the kill
        marker.write_text("ready")
        time.sleep(120)

det = _det()
res = train_detector(det, _data(), TrainConfig(epochs=3, batch_size=2, lr=1e-2, seed=3), ws=Workspace(ws_dir),
                     ckpt="runs/k/model.pt", on_step=on_step)
torch.save({"state": det.trainable_state(), "resumed_from": res.resumed_from}, out)
"""


def _child(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", CHILD, *args], cwd=ROOT, env=env, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tmp_path):
    from actors.core.workspace import Workspace
    from actors.detection.train import read_checkpoint

    full = _child(str(tmp_path / "ws-full"), "-", str(tmp_path / "full.pt"))
    killed = _child(str(tmp_path / "ws"), str(tmp_path / "marker"), str(tmp_path / "never.pt"))
    deadline = time.monotonic() + 120
    while not (tmp_path / "marker").exists():
        assert killed.poll() is None, killed.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the training process never reached epoch 1"
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(30) == -signal.SIGKILL and not (tmp_path / "never.pt").exists()
    ck = read_checkpoint(Workspace(tmp_path / "ws"), "runs/k/model.pt")  # the last finished epoch, intact
    assert ck["epoch"] == 0

    again = _child(str(tmp_path / "ws"), "-", str(tmp_path / "resumed.pt"))
    for p in (again, full):
        assert p.wait(180) == 0, p.stderr.read().decode()[-2000:]
    a = torch.load(tmp_path / "full.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert a["resumed_from"] == 0 and b["resumed_from"] == 1
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k
    assert read_checkpoint(Workspace(tmp_path / "ws"), "runs/k/model.pt")["epoch"] == 2

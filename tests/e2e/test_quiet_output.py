"""Normal output carries no library warnings and no Ray INFO lines (#24 item 13): `assay demo -w WS` in a fresh
process printed a PyTorch UserWarning (a read-only image array given to torch.from_numpy) and Ray Data's
`INFO streaming_executor.py … execution finished` line."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

NOISE = re.compile(r"\b(\w*Warning|INFO|DEBUG)\b[: ]")


def test_decoded_images_are_writable_so_torch_does_not_warn(tmp_path):
    import warnings

    from PIL import Image

    from actors.core.images import load_image

    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "x.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.from_numpy(load_image(str(tmp_path / "x.png")))


@pytest.mark.long
def test_the_demo_prints_no_library_warning_and_no_ray_info_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "ASSAY_VERBOSE", "PYTHONWARNINGS")}
    r = subprocess.run([sys.executable, "-m", "apps.cli.main", "demo", "-w", str(tmp_path / "ws"), "--out",
                        str(tmp_path / "demo"), "--images", "60", "--top-k", "5"],
                       capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "ws" / "catalog" / "images.parquet").exists()  # -w is the demo's workspace
    noisy = [line for line in (r.stdout + r.stderr).splitlines() if NOISE.search(line)]
    assert not noisy, "\n".join(noisy[:10])

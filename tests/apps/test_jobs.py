"""``python -m apps.jobs STEP``: the job entrypoints run the library steps, print a final JSON line, and exit
0 / 2 (user error, one line) / 1 (bug). Also the tiny world every Ray/pipeline test here uses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from apps import jobs

ROOT = Path(__file__).resolve().parents[2]
QUERY_BOX = (40.0, 30.0, 60.0, 50.0)  # the red square in the query image


# ------------------------------------------------------------------------------------------------ the tiny world
def make_images(folder: Path, n: int = 12, *, start: int = 0, seed: int = 0, size=(128, 96)) -> list[Path]:
    """``n`` noisy 128×96 PNGs ``img-<k>.png``; every third holds a red 16-px square (the standing query's
    object), the others a green circle and a blue triangle. Deterministic in (seed, k)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(start, start + n):
        rng = np.random.default_rng(seed * 1000 + k)
        w, h = size
        base = rng.integers(70, 180, 3).reshape(1, 1, 3) + rng.normal(0, 10, (h, w, 3))
        im = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(im)
        x, y = int(rng.integers(4, w - 24)), int(rng.integers(4, h - 24))
        if k % 3 == 0:
            d.rectangle((x, y, x + 16, y + 16), fill=(220, 30, 30))
        else:
            d.ellipse((x, y, x + 16, y + 16), fill=(30, 200, 30))
            d.polygon([(w - x - 16, y + 16), (w - x, y + 16), (w - x - 8, y)], fill=(40, 60, 230))
        out.append(folder / f"img-{k:03d}.png")
        im.save(out[-1])
    return out


def make_query(path: Path) -> tuple[str, tuple[float, float, float, float]]:
    """A query image (not in the pool) with a red square at :data:`QUERY_BOX`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(999)
    im = Image.fromarray(np.clip(120 + rng.normal(0, 10, (96, 128, 3)), 0, 255).astype(np.uint8))
    ImageDraw.Draw(im).rectangle((40, 30, 59, 49), fill=(220, 30, 30))
    im.save(path)
    return str(path), QUERY_BOX


def random_backbone(workspace: str) -> None:
    """A seeded random-init assay-small checkpoint in the workspace (no training: tests stay fast)."""
    import torch

    from actors.core.workspace import Workspace
    from actors.features.small import SmallConfig, save_small_checkpoint, small_trunk

    torch.manual_seed(0)
    save_small_checkpoint(Workspace(workspace), small_trunk(SmallConfig()), SmallConfig())


def run_jobs(*args: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "apps.jobs", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)


# ------------------------------------------------------------------------------------------------ tests
def test_steps_in_process_ingest_embed_index_mine_and_final_json(tmp_path, capsys):
    """The steps on the tiny world with random assay-small weights (fast; the default backbone's own flow is
    tests/apps/cli/test_embed.py::test_embed_index_mine_with_no_flags_use_the_pretrained_lite0)."""
    ws = str(tmp_path / "ws")
    make_images(tmp_path / "in", 6)
    random_backbone(ws)
    assert jobs.main(["ingest", str(tmp_path / "in"), "-w", ws, "--split", "pool"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["added"] == 6
    assert jobs.main(["embed", "-w", ws, "-b", "assay-small", "--local", "--shard-size", "4"]) == 0
    emb = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (emb["n_embedded"], emb["shards_written"]) == (6, 2) and emb["images_per_s"] is not None
    assert jobs.main(["index", "-w", ws, "-m", "assay-small"]) == 0
    idx = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert idx["region"]["images"] == 6 and idx["region"]["added_images"] == 6
    q, box = make_query(tmp_path / "q.png")
    assert jobs.main(["mine", "-w", ws, "-m", "assay-small", "--image", q, "--box", ",".join(map(str, box)),
                      "-k", "3", "--run-id", "r1"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    sel = out["selections"][0]
    assert sel["hits"] == 3 and out["wrote"] == [f"selections/{sel['query_id']}.parquet",
                                                 f"selections/{sel['query_id']}.r1.parquet"]
    assert (tmp_path / "ws" / out["wrote"][1]).exists() and (tmp_path / "ws" / out["wrote"][0]).exists()
    # a second embed is a no-op: every shard is done
    assert jobs.main(["embed", "-w", ws, "-b", "assay-small", "--local", "--shard-size", "4"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (again["n_embedded"], again["shards_written"], again["shards_skipped"]) == (0, 0, 2)


def test_user_error_exits_2_with_one_line_and_bug_exits_1(tmp_path, capsys):
    assert jobs.main(["index", "-w", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert jobs.main(["mine", "-w", str(tmp_path / "empty")]) == 2  # neither --image nor --queries
    assert "give --image" in capsys.readouterr().err

    def boom(_):
        raise ZeroDivisionError("a bug")

    assert jobs.main(["index", "-w", str(tmp_path)], run=boom) == 1
    assert "Traceback" in capsys.readouterr().err


def test_module_entrypoint_exit_codes_and_last_line_json(tmp_path):
    ok = run_jobs("ingest", str(ROOT / "tests" / "apps"), "-w", str(tmp_path / "ws"))  # no images: a user error
    assert ok.returncode == 2 and ok.stderr.strip().startswith("error: ") and "empty folder" in ok.stderr
    make_images(tmp_path / "in", 2)
    r = run_jobs("ingest", str(tmp_path / "in"), "-w", str(tmp_path / "ws"))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["added"] == 2


def test_bad_run_id_is_a_user_error():
    with pytest.raises(jobs.UserError, match="run-id"):
        jobs._safe("../x")


def test_learn_and_compress_run_their_assay_commands_as_jobs(tmp_path, capsys, monkeypatch):
    ws = str(tmp_path / "ws")
    assert jobs.main(["learn", "-w", ws]) == 2  # options pass through to `assay learn`; a user error stays 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and ws in err[0]
    assert jobs.main(["compress", "-w", ws, "--run", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "nope" in capsys.readouterr().err
    import apps.cli.main as cli

    monkeypatch.setattr(cli, "main", lambda argv: print("a note\n" + json.dumps({"argv": argv}, indent=2)) or 0)
    assert jobs.main(["learn", "-w", ws, "--rounds", "1"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == {"step": "learn", "result": {"argv": ["learn", "-w", ws, "--rounds", "1", "--json"]}}


def test_unknown_options_of_core_steps_are_usage_errors():
    with pytest.raises(SystemExit) as e:
        jobs.main(["index", "-w", "x", "--bogus"])
    assert e.value.code == 2


# ------------------------------------------------------------------------------------------------ submission helpers
@pytest.fixture
def no_cluster(tmp_path, monkeypatch):
    from apps.cli import cluster

    monkeypatch.setenv("ASSAY_CLUSTER_DIR", str(tmp_path / "cluster"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    for k in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "ASSAY_JOB_PYTHON"):
        monkeypatch.delenv(k, raising=False)
    return cluster


def test_the_client_finds_a_cluster_and_never_invents_a_token(no_cluster, tmp_path):
    with pytest.raises(jobs.UserError, match="no cluster"):
        no_cluster.job_client()
    with pytest.raises(jobs.UserError, match="no token was found"):
        no_cluster.job_client("http://127.0.0.1:9")
    assert not (tmp_path / "home" / ".ray").exists()  # nothing was generated


def test_entrypoints_name_the_interpreter_of_the_cluster(no_cluster, tmp_path):
    ep = no_cluster.entrypoint(["mine", "--image", "a b.png"], "/opt/py/bin/python")
    assert ep == "/opt/py/bin/python -m apps.jobs mine --image 'a b.png'"
    assert no_cluster.entrypoint(["index"]) == "python -m apps.jobs index"  # no local head: the image's python
    from tests.procs import fake_head

    head, temp = fake_head(tmp_path)  # the local head's pid must be a `ray start --head` with its temp dir
    try:
        (tmp_path / "cluster").mkdir()
        (tmp_path / "cluster" / "cluster.json").write_text(json.dumps({
            "pid": head.pid, "python": "/venv/bin/python", "dashboard": "http://127.0.0.1:1",
            "address": "127.0.0.1:2", "auth": True, "token_path": None, "temp_dir": temp}))
        assert no_cluster.entrypoint(["index"]) == "/venv/bin/python -m apps.jobs index"
        assert no_cluster.resolve_address(None)[0] == "http://127.0.0.1:1"
        assert no_cluster.resolve_address("127.0.0.1:2")[0] == "http://127.0.0.1:1"
        assert no_cluster.resolve_address("http://10.0.0.5:8265") == ("http://10.0.0.5:8265", None)
    finally:
        head.kill()
        head.wait()
    env = no_cluster.runtime_env()
    assert env["working_dir"] == str(ROOT) and ".venv/" in env["excludes"]

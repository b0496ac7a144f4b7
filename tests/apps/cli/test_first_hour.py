"""A new user's first hour (issue #25): their own folder of JPEGs through `assay ingest -> embed -> index -> mine`,
with no split, backbone or model flag, and the messages they meet on the way."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from apps.cli.main import app, main

runner = CliRunner()
BOX = "20,20,44,44"  # the red square every even photo holds


def make_photos(folder: Path, n: int = 6) -> list[Path]:
    """``n`` noisy 128×96 JPEGs ``photo-<k>.jpg``: even ones hold a red square at :data:`BOX`, odd ones a green
    disc elsewhere. Deterministic in k."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(n):
        rng = np.random.default_rng(k)
        im = Image.fromarray(np.clip(120 + rng.normal(0, 12, (96, 128, 3)), 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(im)
        if k % 2 == 0:
            d.rectangle((20, 20, 43, 43), fill=(220, 30, 30))
        else:
            d.ellipse((70, 40, 94, 64), fill=(30, 200, 30))
        out.append(folder / f"photo-{k}.jpg")
        im.save(out[-1], "JPEG", quality=90)
    return out


def _ok(args: list[str]):
    res = runner.invoke(app, args)
    assert res.exit_code == 0, (args, res.output, res.exception)
    return res


def test_own_jpeg_folder_goes_ingest_embed_index_mine_with_no_flags(tmp_path):
    photos = make_photos(tmp_path / "photos")
    ws = str(tmp_path / "ws")
    _ok(["ingest", str(tmp_path / "photos"), "-w", ws])
    cat = json.loads(_ok(["catalog", "-w", ws, "--json"]).stdout)
    assert cat["images_by_split"] == {"pool": {"ok": 6}}  # a folder is the pool: what embed reads by default
    rep = json.loads(_ok(["embed", "-w", ws, "--local", "--json"]).stdout)
    assert rep["n_embedded"] == rep["n_images"] == 6
    assert json.loads(_ok(["index", "-w", ws, "--json"]).stdout)[0]["images"] == 6
    out = json.loads(_ok(["mine", "-w", ws, "--image", str(photos[2]), "--box", BOX, "-k", "3", "--json"]).stdout)
    assert len(out["hits"]) == 3


def test_embed_with_nothing_in_its_split_says_what_to_run(tmp_path, capsys):
    make_photos(tmp_path / "photos", 2)
    ws = str(tmp_path / "ws")
    _ok(["ingest", str(tmp_path / "photos"), "-w", ws, "--split", "mine"])
    assert main(["embed", "-w", ws, "--local"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no readable image in split(s) 'pool'" in err
    assert "2 in split 'mine'" in err and f"assay embed -w {Path(ws).resolve()} --split SPLIT" in err

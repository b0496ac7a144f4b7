"""A new user's first hour (issue #25): their own folder of JPEGs through `assay ingest -> embed -> index -> mine`,
with no split, backbone or model flag, and the messages they meet on the way."""

from __future__ import annotations

import json
import shlex
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


def readme_five_commands() -> list[list[str]]:
    """The README's "Your own images in five commands" block, each command split into its arguments."""
    text = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    block = text.split("## Your own images in five commands", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line) for line in block.strip().splitlines()]


def test_own_jpeg_folder_goes_ingest_embed_index_mine_with_no_flags(tmp_path):
    """The README's five commands, as written, on a folder of JPEGs (only paths substituted; embed runs --local here
    instead of on Ray, and --json is added to read the results)."""
    photos = make_photos(tmp_path / "photos")
    ws = str(tmp_path / "ws")
    commands = readme_five_commands()
    assert [c[:2] for c in commands] == [["assay", "ingest"], ["assay", "embed"], ["assay", "index"],
                                         ["assay", "mine"], ["assay", "show"]]
    subst = {"photos/": str(tmp_path / "photos"), "my-ws": ws, "photos/query.jpg": str(photos[2]),
             "120,80,180,140": BOX}
    out: dict = {}
    for cmd in commands:
        args = [subst.get(a, a) for a in cmd[1:]]
        if args[0] == "show":
            args[1] = out["mine"]["query_id"]
        extra = ["--local"] if args[0] == "embed" else []
        out[args[0]] = json.loads(_ok(args + extra + ["--json"]).stdout)
    cat = json.loads(_ok(["catalog", "-w", ws, "--json"]).stdout)
    assert cat["images_by_split"] == {"pool": {"ok": 6}}  # a folder is the pool: what embed reads by default
    assert out["embed"]["n_embedded"] == out["embed"]["n_images"] == 6
    assert out["index"][0]["images"] == 6
    assert len(out["mine"]["hits"]) == 5 and all(h["uri"] for h in out["mine"]["hits"])  # 6 photos less the query
    assert Path(out["show"]["sheet"]).is_file()


def test_embed_with_nothing_in_its_split_says_what_to_run(tmp_path, capsys):
    make_photos(tmp_path / "photos", 2)
    ws = str(tmp_path / "ws")
    _ok(["ingest", str(tmp_path / "photos"), "-w", ws, "--split", "mine"])
    assert main(["embed", "-w", ws, "--local"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no readable image in split(s) 'pool'" in err
    assert "2 in split 'mine'" in err and f"assay embed -w {Path(ws).resolve()} --split SPLIT" in err


def _fails(args: list[str], capsys) -> str:
    """The one-line error of a command that must exit 2."""
    assert main(args) == 2, args
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def test_each_step_names_the_next_command_and_the_first_missing_one(tmp_path, capsys):
    """On a fresh workspace mine, index and embed all say to ingest (not mine -> index -> embed -> 'not found');
    after each step the hint names the next one, always with -w."""
    make_photos(tmp_path / "photos", 2)
    ws = str(tmp_path / "ws")
    uri = str(Path(ws).resolve())
    for cmd in (["mine", "--image", "x.jpg", "--box", BOX], ["index"], ["embed", "--local"]):
        assert f"assay ingest FOLDER -w {uri}" in _fails([cmd[0], "-w", ws, *cmd[1:]], capsys)
    assert f"next: assay embed -w {uri}\n" in _ok(["ingest", str(tmp_path / "photos"), "-w", ws]).stdout
    for cmd in (["mine", "--image", "x.jpg", "--box", BOX], ["index"]):
        assert f"run `assay embed -w {uri}`" in _fails([cmd[0], "-w", ws, *cmd[1:]], capsys)
    assert f"next: assay index -w {uri}\n" in _ok(["embed", "-w", ws, "--local"]).stdout
    assert f"run `assay index -w {uri}`" in _fails(["mine", "-w", ws, "--image", "x.jpg", "--box", BOX], capsys)
    assert f"next: assay mine -w {uri} --image" in _ok(["index", "-w", ws]).stdout


def test_mine_with_a_query_file_that_is_not_an_image_is_one_line_naming_it(tmp_path, capsys):
    make_photos(tmp_path / "photos", 2)
    ws = str(tmp_path / "ws")
    for cmd in (["ingest", str(tmp_path / "photos")], ["embed", "--local"], ["index"]):
        _ok([cmd[0], "-w", ws, *cmd[1:]])
    bad = tmp_path / "query.jpg"
    bad.write_text("not a picture")
    assert f"--image {bad}: not an image" in _fails(["mine", "-w", ws, "--image", str(bad), "--box", BOX], capsys)


def test_selection_rows_carry_the_uri_and_leave_out_the_query_image_unless_kept(tmp_path):
    """selections/<id>.parquet has a uri per hit (joined from the catalog); a pool photo used as the query is not a
    hit of itself (it would be the best one) unless --keep-query; either way -k hits come back."""
    import pyarrow.parquet as pq

    photos = make_photos(tmp_path / "photos", 6)
    ws = str(tmp_path / "ws")
    for cmd in (["ingest", str(tmp_path / "photos")], ["embed", "--local"], ["index"]):
        _ok([cmd[0], "-w", ws, *cmd[1:]])
    query = str(photos[2])

    def mine(*extra: str) -> tuple[dict, list[dict]]:
        out = json.loads(_ok(["mine", "-w", ws, "--image", query, "--box", BOX, "-k", "3", "--json", *extra]).stdout)
        return out, pq.read_table(Path(ws) / "selections" / f"{out['query_id']}.parquet").to_pylist()

    out, rows = mine()
    assert [r["rank"] for r in rows] == [1, 2, 3] and len(out["hits"]) == 3
    assert all(r["uri"] in {str(p) for p in photos} for r in rows)
    assert query not in {r["uri"] for r in rows} and out["query_image_left_out"]
    assert [h["uri"] for h in out["hits"]] == [r["uri"] for r in rows]
    out, rows = mine("--keep-query")
    assert len(rows) == 3 and query in {r["uri"] for r in rows} and out["query_image_left_out"] is None
    text = _ok(["mine", "-w", ws, "--image", query, "--box", BOX, "-k", "3"]).stdout
    assert "the query image itself" in text and "--keep-query keeps it" in text

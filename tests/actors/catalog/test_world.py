from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from actors.core.errors import UserError
from actors.catalog.world import DEFAULT_CLASSES, WorldConfig, make_world, render_image

TINY = dict(n_images=20, size=(128, 96), workers=1, object_area=(0.004, 0.02))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world") / "w"
    return make_world(out, seed=3, **TINY)


def test_same_seed_gives_byte_identical_files(tmp_path, tiny_world):
    first = _files(Path(tiny_world.out_dir))
    out = tmp_path / "w"
    make_world(out, seed=3, **TINY)
    out.rename(tmp_path / "first")
    make_world(out, seed=3, **TINY)
    again = _files(out)
    assert again == _files(tmp_path / "first")  # images, COCO JSON, world.json and the catalog's Parquet
    assert {k for k in first if not k.startswith("workspace")} == {k for k in again if not k.startswith("workspace")}


def test_other_seed_differs_and_workers_do_not_matter(tmp_path, tiny_world):
    other = make_world(tmp_path / "o", seed=4, **TINY)
    a = _files(Path(tiny_world.out_dir) / "images")
    assert a != _files(Path(other.out_dir) / "images")
    cfg = WorldConfig(seed=3, size=(128, 96))
    img1, objs1 = render_image(cfg, 5)
    img2, objs2 = render_image(cfg, 5)
    assert np.array_equal(img1, img2) and objs1 == objs2


def test_layout_and_coco_boxes_are_valid(tiny_world):
    out = Path(tiny_world.out_dir)
    assert tiny_world.images_per_split == {"train": 6, "val": 2, "pool": 10, "queries": 2}
    meta = json.loads((out / "world.json").read_text())
    assert meta["counts"]["n_images"] == 20 and meta["config"]["seed"] == 3
    for split, n in tiny_world.images_per_split.items():
        coco = json.loads((out / "annotations" / f"{split}.json").read_text())
        assert len(coco["images"]) == n
        assert [c["name"] for c in coco["categories"]] == list(WorldConfig().categories())
        assert {c["supercategory"] for c in coco["categories"]} == {"vehicle", "animal", "plant", "person",
                                                                    "street", "object"}
        for im in coco["images"]:
            assert im["file_name"] == f"images/{split}/{Path(im['file_name']).name}"
            assert Image.open(out / im["file_name"]).size == (128, 96)
        for a in coco["annotations"]:
            x, y, w, h = a["bbox"]
            assert w >= 1 and h >= 1 and x >= 0 and y >= 0 and x + w <= 128 and y + h <= 96
            assert a["iscrowd"] == 0 and 0 < a["area"] <= w * h
        if split == "queries":
            per_image = {a["image_id"] for a in coco["annotations"]}
            assert per_image == {im["id"] for im in coco["images"]}


def test_default_world_spreads_sizes_over_both_bins_and_skews_classes():
    cfg = WorldConfig()  # shipped defaults, 512x384
    objs = [o for i in range(80) for o in render_image(cfg, i)[1]]
    areas = np.array([o["bbox"][2] * o["bbox"][3] / (512 * 384) for o in objs])
    assert len(areas) > 100
    assert 0.4 < np.mean(areas < 0.01) < 0.8  # a < 1% bin and a 1-4% bin, both well filled
    assert areas.max() < 0.06
    probs = dict(zip(cfg.categories(), cfg.class_probs()))
    assert probs["car"] > 5 * probs["boat"]  # common and rare classes by default


def test_default_classes_are_category_level_drawings():
    from actors.catalog.emoji import EMOJI_CATEGORIES

    assert DEFAULT_CLASSES == ("emoji",) and WorldConfig().categories() == tuple(EMOJI_CATEGORIES)
    # every category has several distinct drawings, at least one held out for queries and three for the rest
    assert all(len(codes) >= 4 for codes in EMOJI_CATEGORIES.values())
    img, objs = render_image(WorldConfig(seed=2), 1, min_objects=2)
    assert img.shape == (384, 512, 3) and len(objs) >= 2


def test_classes_subset_and_bad_config(tmp_path):
    cfg = WorldConfig(classes=("shape", "face"), size=(128, 96))
    assert cfg.categories() == ("face", "circle", "triangle", "square", "star", "ring", "cross")
    _, objs = render_image(cfg, 0, min_objects=1)
    assert objs and all(o["category"] in cfg.categories() for o in objs)
    with pytest.raises(UserError, match="unknown class"):
        WorldConfig(classes=("zebra",)).validate()
    with pytest.raises(UserError, match="sum to 1"):
        make_world(tmp_path / "x", splits=(("train", 0.5),), **TINY)


def test_refuses_to_overwrite_a_world(tiny_world):
    with pytest.raises(UserError, match="already holds a world"):
        make_world(tiny_world.out_dir, seed=3, **TINY)


def test_catalog_holds_every_image_and_box(tiny_world):
    from actors.catalog.schema import catalog_summary

    s = catalog_summary(tiny_world.workspace)
    assert s["images"] == 20 and s["images_by_status"] == {"ok": 20}
    assert s["labels"] == tiny_world.n_objects
    assert sum(v.get("ok", 0) for v in s["images_by_split"].values()) == 20
    assert os.path.isdir(tiny_world.workspace)


def test_query_instances_are_held_out_of_every_other_split(tiny_world):
    from actors.catalog.world import QUERY_INSTANCE_EVERY, encode_image

    cfg = WorldConfig(seed=3, size=(128, 96), classes=("digit", "face", "vehicle"), object_area=(0.004, 0.02))
    seen = {True: set(), False: set()}
    for i in range(60):
        for held_out in (True, False):
            for o in render_image(cfg, i, min_objects=1, held_out=held_out)[1]:
                assert o["instance"] is not None
                seen[held_out].add((o["category"], o["instance"]))
    assert len(seen[True]) > 20 and len(seen[False]) > 20
    assert not seen[True] & seen[False]  # no glyph / face crop is both a query and a pool/train object
    assert all(i % QUERY_INSTANCE_EVERY == 0 for _, i in seen[True])
    assert all(i % QUERY_INSTANCE_EVERY != 0 for _, i in seen[False])
    # make_world renders exactly the queries split with held-out instances, and no other split
    out = Path(tiny_world.out_dir)
    world_cfg = WorldConfig(seed=3, **{k: v for k, v in TINY.items() if k != "n_images"})
    for split, held_out in (("queries", True), ("pool", False)):
        im = json.loads((out / "annotations" / f"{split}.json").read_text())["images"][0]
        arr, _ = render_image(world_cfg, im["id"] - 1, min_objects=int(held_out), held_out=held_out)
        assert (out / im["file_name"]).read_bytes() == encode_image(arr, "jpg", world_cfg.jpeg_quality)


def test_world_killed_part_way_resumes_to_the_same_files(tmp_path, monkeypatch):
    import actors.catalog.world as world

    make_world(tmp_path / "whole", seed=4, **TINY)
    real, made = world._make_one, []

    def killed_after_7(args):
        if len(made) == 7:
            raise KeyboardInterrupt("killed")
        made.append(args[4])
        return real(args)

    monkeypatch.setattr(world, "_make_one", killed_after_7)
    with pytest.raises(KeyboardInterrupt):
        make_world(tmp_path / "w", seed=4, **TINY)
    assert not (tmp_path / "w" / "world.json").exists() and len(list((tmp_path / "w").rglob("*.jpg"))) == 7
    with pytest.raises(UserError, match="unfinished world with other settings"):
        make_world(tmp_path / "w", seed=5, **TINY)
    redone = []
    monkeypatch.setattr(world, "_make_one", lambda args: redone.append(args[4]) or real(args))
    s = make_world(tmp_path / "w", seed=4, **TINY)  # the same call finishes it
    assert len(redone) == 20 - 7 and not set(redone) & set(made)  # images already written are skipped
    assert s.n_images == 20 and (tmp_path / "w" / "world.json").exists()
    whole, resumed = _files(tmp_path / "whole"), _files(tmp_path / "w")
    for name in whole:
        if not name.startswith("workspace"):
            assert resumed[name] == whole[name], name
    assert {n for n in resumed if not n.startswith("workspace")} == {n for n in whole if not n.startswith("workspace")}


def test_a_torn_progress_line_is_ignored_and_that_image_redone(tmp_path, monkeypatch):
    import actors.catalog.world as world

    out = tmp_path / "w"
    real = world._make_one
    calls = []

    def killed_after_3(args):
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        calls.append(1)
        return real(args)

    monkeypatch.setattr(world, "_make_one", killed_after_3)
    with pytest.raises(KeyboardInterrupt):
        make_world(out, seed=4, **TINY)
    ledger = out / world.PROGRESS
    lines = ledger.read_text().splitlines()
    ledger.write_text("\n".join(lines[:2]) + "\n" + lines[2][:10])  # killed while logging the 3rd image
    monkeypatch.setattr(world, "_make_one", real)
    s = make_world(out, seed=4, **TINY)
    assert s.n_images == 20 and catalog_images(s.workspace) == 20


def catalog_images(ws: str) -> int:
    from actors.catalog.schema import catalog_summary

    return catalog_summary(ws)["images"]


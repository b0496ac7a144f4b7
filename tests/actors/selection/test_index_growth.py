"""An index grown by additions becomes the index a build of its size would be (#24 item 6): exact below
``FLAT_MAX`` vectors, IVF-PQ from there, as the README says; a factory the user gave is kept."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import actors.selection.index as index_mod
from actors.selection.index import FLAT_MAX, add_to_index, build_index, load_index
from tests.actors.selection.test_index import maps, write

SMALL_FLAT_MAX = 1000  # 20 images × 30 cells = 600 vectors (exact), 40 images = 1,200 (past it)


def _grow(workspace, n_before: int, n_after: int):
    fms = maps([f"im{k:02d}" for k in range(n_after)], hw=(5, 6))
    write(workspace, fms[:n_before])
    return fms


def test_readme_states_the_size_where_the_index_leaves_flat():
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `assay index"))
    m = re.search(r"exact below (\d+)M vectors, IVF-PQ above", row)
    assert m and int(m.group(1)) * 1_000_000 == FLAT_MAX


def test_an_exact_index_grown_past_flat_max_by_add_becomes_ivf_pq(workspace, monkeypatch):
    monkeypatch.setattr(index_mod, "FLAT_MAX", SMALL_FLAT_MAX)
    fms = _grow(workspace, 20, 40)
    man = build_index(workspace, "toy", cell_pool=1, progress=False)
    assert (man.factory, man.n) == ("Flat", 600)
    write(workspace, fms)  # 20 more images: 1,200 vectors
    grown = add_to_index(workspace, "toy", progress=False)
    assert grown.factory.startswith("IVF") and "PQ" in grown.factory and grown.n == 1200
    assert grown.nprobe > 0 and load_index(workspace, "toy").indexed_images() == {f.image_id for f in fms}


def test_a_flat_factory_the_user_gave_stays_flat_when_grown(workspace, monkeypatch):
    monkeypatch.setattr(index_mod, "FLAT_MAX", SMALL_FLAT_MAX)
    fms = _grow(workspace, 20, 40)
    build_index(workspace, "toy", factory="Flat", cell_pool=1, progress=False)
    write(workspace, fms)
    grown = add_to_index(workspace, "toy", progress=False)
    assert (grown.factory, grown.n) == ("Flat", 1200)


def test_a_sharded_exact_index_grown_past_flat_max_is_rebuilt_ivf_pq(ray_cluster, workspace, monkeypatch):
    from actors.selection.sharded_build import index_region, sharded_manifest

    monkeypatch.setattr(index_mod, "FLAT_MAX", SMALL_FLAT_MAX)
    fms = _grow(workspace, 20, 40)
    first = index_region(workspace, "toy", shards=2, cell_pool=1, progress=False)
    assert (first["factory"], first["n"]) == ("Flat", 600)
    write(workspace, fms)
    grown = index_region(workspace, "toy", progress=False)  # keeps the sharded form, grows it
    assert grown["factory"].startswith("IVF") and grown["n"] == 1200 and grown["images"] == 40
    assert sharded_manifest(workspace, "toy")["extra"]["factory_chosen"] == "by size"

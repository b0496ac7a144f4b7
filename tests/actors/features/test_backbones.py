"""Backbone registry, weights loading, assay-small training (tiny toy catalog, CPU, seconds)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn as nn
from PIL import Image, ImageDraw

from actors.core.errors import UserError
from actors.catalog.schema import IMAGES, LABELS
from actors.features.backbones import FeatureExtractor, get_backbone, list_backbones, probe, read_checkpoint
from actors.features.small import train_backbone
from actors.core.images import (
    augment_objects,
    background_windows,
    object_mask,
    paste_objects,
)
from actors.core.workspace import Workspace

COLOURS = {"square": (220, 30, 30), "circle": (30, 200, 30), "triangle": (40, 60, 230)}


def make_toy_catalog(ws: Workspace, img_dir, *, seed: int = 0, splits=(("train", 12), ("val", 4), ("pool", 6)),
                     size=(128, 96), per_image: int = 3) -> list[dict]:
    """A learnable toy world: noisy backgrounds with 12–20 px coloured shapes; writes catalog/*.parquet."""
    rng = np.random.default_rng(seed)
    img_dir.mkdir(parents=True, exist_ok=True)
    images, labels = [], []
    for split, n in splits:
        for k in range(n):
            w, h = size
            base = rng.integers(60, 190, 3).reshape(1, 1, 3) + rng.normal(0, 12, (h, w, 3))
            im = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
            draw, image_id = ImageDraw.Draw(im), f"{split}-{k:03d}"
            for b in range(per_image):
                cat = list(COLOURS)[(k + b) % 3]
                s = int(rng.integers(12, 21))
                x0, y0 = int(rng.integers(b * w // per_image, (b + 1) * w // per_image - s)), int(rng.integers(0, h - s))
                box = (x0, y0, x0 + s, y0 + s)
                {"square": draw.rectangle, "circle": draw.ellipse}.get(
                    cat, lambda bb, fill: draw.polygon([(x0, y0 + s), (x0 + s, y0 + s), (x0 + s / 2, y0)], fill=fill)
                )(box, fill=COLOURS[cat])
                labels.append(dict(image_id=image_id, box_id=b, x0=x0, y0=y0, x1=x0 + s, y1=y0 + s, category=cat,
                                   source="human", status="ok", error=""))
            uri = str(img_dir / f"{image_id}.png")
            im.save(uri)
            images.append(dict(image_id=image_id, uri=uri, width=w, height=h, source="toy", split=split,
                               status="ok", error=""))
    write_catalog(ws, images, labels)
    return images


def write_catalog(ws: Workspace, images: list[dict], labels: list[dict] | None = None) -> None:
    ws.write_table(IMAGES, pa.Table.from_pylist(images).cast(pa.schema([
        ("image_id", pa.string()), ("uri", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
        ("source", pa.string()), ("split", pa.string()), ("status", pa.string()), ("error", pa.string())])))
    if labels is not None:
        ws.write_table(LABELS, pa.Table.from_pylist(labels).cast(pa.schema([
            ("image_id", pa.string()), ("box_id", pa.int32()), ("x0", pa.float32()), ("y0", pa.float32()),
            ("x1", pa.float32()), ("y1", pa.float32()), ("category", pa.string()), ("source", pa.string()),
            ("status", pa.string()), ("error", pa.string())])))


def _build(name: str, tmp_path, **cfg) -> FeatureExtractor:
    """Build any registered backbone offline: random weights saved to a local checkpoint, then loaded."""
    if name == "torchscript":
        path = tmp_path / "m.pt"
        torch.jit.script(nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 12, 3, 2, 1))).save(str(path))
        return get_backbone(f"torchscript:{path}")
    # own builders; lite0's real weights: tests/actors/features/test_lite0.py, fine-tuned: test_lite0_finetune.py
    if name in ("assay-small", "efficientnet-lite0", "efficientnet-lite0-ft"):
        return get_backbone(name, random_init=True, **cfg)
    import torchvision

    path = tmp_path / f"{name}.pt"
    torch.save(torchvision.models.get_model(name, weights=None).state_dict(), path)
    return get_backbone(f"{name}:{path}", **cfg)


@pytest.mark.parametrize("name", list_backbones())
def test_every_backbone_builds_offline_with_consistent_dim_and_stride(name, tmp_path):
    ext = _build(name, tmp_path)
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        out = ext(x)  # 2×C×h×w
    assert out.shape[:2] == (2, ext.dim)
    assert out.shape[2] == pytest.approx(64 / ext.stride, abs=1)
    assert out.shape[3] == pytest.approx(96 / ext.stride, abs=1)
    assert probe(ext) == (ext.dim, ext.stride)


@pytest.mark.parametrize("cfg,stride,dim", [({}, 8, 128), ({"stride": 16}, 16, 256), ({"layer": "layer1"}, 4, 64)])
def test_resnet18_truncation_by_stride_or_layer(cfg, stride, dim):
    ext = get_backbone("resnet18", random_init=True, **cfg)
    assert (ext.stride, ext.dim) == (stride, dim)


def test_checkpoint_forms_load_with_weights_only(tmp_path):
    import torchvision

    sd = torchvision.models.resnet18(weights=None).state_dict()
    ref = get_backbone("resnet18", random_init=True)
    for i, obj in enumerate([sd, {"model": sd, "epoch": 3}, {"state_dict": {f"module.{k}": v for k, v in sd.items()}}]):
        torch.save(obj, tmp_path / f"c{i}.pt")
        ext = get_backbone(f"resnet18:{tmp_path / f'c{i}.pt'}")
        assert torch.equal(ext.body[0].weight, sd["conv1.weight"])
        assert ext.weights_id != ref.weights_id
    torch.save({"model": nn.Linear(2, 2)}, tmp_path / "pickled.pt")  # a pickled module: refused by weights_only
    with pytest.raises(Exception):
        read_checkpoint(tmp_path / "pickled.pt")


def test_missing_weights_give_clear_errors(tmp_path, monkeypatch, workspace):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(UserError, match="never downloads"):
        get_backbone("resnet18")
    with pytest.raises(UserError, match="does not exist"):
        get_backbone(f"resnet18:{tmp_path / 'nope.pt'}")
    with pytest.raises(UserError, match="assay backbone train"):
        get_backbone("assay-small", workspace=workspace)
    with pytest.raises(UserError, match="unknown backbone"):
        get_backbone("alexnet-9000")


def test_wrong_architecture_checkpoint_is_refused(tmp_path):
    torch.save(get_backbone("assay-small", random_init=True).body.state_dict(), tmp_path / "small.pt")
    with pytest.raises(UserError, match="does not fit resnet18"):
        get_backbone(f"resnet18:{tmp_path / 'small.pt'}")


def _square_windows(n: int, side: int = 64, w: int = 16, h: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """n windows, dark background, a white w×h rectangle centred: (uint8 n×side×side×3, wh n×2)."""
    x = torch.full((n, side, side, 3), 20, dtype=torch.uint8)
    c = side // 2
    x[:, c - h // 2:c + h // 2, c - w // 2:c + w // 2] = 255
    return x, torch.tensor([[float(w), float(h)]] * n)


def test_copy_paste_puts_the_object_inside_its_box_on_the_new_background():
    obj, wh = _square_windows(3)
    bg = torch.randint(0, 120, (3, 64, 64, 3), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    out = paste_objects(obj, wh, bg)
    assert out.shape == obj.shape and out.dtype == torch.uint8
    assert torch.equal(out[:, 30:34, 28:36], obj[:, 30:34, 28:36])  # object core copied
    assert torch.equal(out[:, :20], bg[:, :20]) and torch.equal(out[:, :, :20], bg[:, :, :20])  # context replaced
    m = object_mask(obj, wh)[:, 0]  # 3×64×64
    assert m[:, 32, 32].min() == 1 and m[:, 5, 5].max() == 0


def test_augmented_boxes_follow_the_object_through_rotation_scale_and_shift():
    x, wh = _square_windows(16, side=96, w=20, h=12)
    y, boxes = augment_objects(x, wh, torch.full((16,), 0.5), 48, torch.Generator().manual_seed(1), invert=0, grey=0)
    assert y.shape == (16, 3, 48, 48) and boxes.shape == (16, 4)
    for img, b in zip(y, boxes):
        ys, xs = torch.nonzero(img.amax(0) > 0.6, as_tuple=True)
        found = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
        inside = (b >= 0) & (b <= 48)  # a shifted object may leave the crop; compare the edges still inside
        assert torch.allclose(found[inside], b[inside], atol=2.0)


def test_hard_background_windows_prefer_texture():
    img = np.zeros((64, 128, 3), np.uint8)
    img[:, 64:] = np.random.default_rng(0).integers(0, 255, (64, 64, 3))  # right half textured
    easy = background_windows(img, np.zeros((0, 4)), 16, 20, np.random.default_rng(0))
    hard = background_windows(img, np.zeros((0, 4)), 16, 20, np.random.default_rng(0), hard=4)
    assert len(hard) == 20 and hard.std() > easy.std()


def test_train_backbone_learns_toy_world_and_is_deterministic(workspace, tmp_path):
    make_toy_catalog(workspace, tmp_path / "img")
    # a generous time budget: on a loaded machine the default 2.5 min would bind and cut the schedule (not a bug)
    rep = train_backbone(workspace, epochs=8, crop=32, batch_size=32, max_minutes=30, progress=False)
    assert rep.n_val > 0 and rep.classes == ["circle", "square", "triangle"]
    assert rep.val_accuracy > rep.majority + 0.15 and not rep.stopped_early
    ext = get_backbone("assay-small", workspace=workspace)
    assert (ext.dim, ext.stride) == (64, 8) and ext.weights_id != "random-init"
    # determinism: two short runs give the same weights bit for bit (a short run keeps the suite fast)
    first = train_backbone(workspace, epochs=1, crop=32, batch_size=32, max_minutes=30, progress=False)
    one = get_backbone("assay-small", workspace=workspace).weights_id
    assert one != ext.weights_id
    rep2 = train_backbone(workspace, epochs=1, crop=32, batch_size=32, max_minutes=30, progress=False)
    assert rep2.val_accuracy == first.val_accuracy
    assert get_backbone("assay-small", workspace=workspace).weights_id == one


def test_train_backbone_respects_its_time_budget(workspace, tmp_path):
    make_toy_catalog(workspace, tmp_path / "img")
    rep = train_backbone(workspace, epochs=10_000, crop=32, batch_size=32, max_minutes=0.15, progress=False)
    assert rep.stopped_early and rep.seconds < 0.15 * 60 + 20
    assert workspace.exists("models/assay-small.pt")

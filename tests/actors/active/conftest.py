"""A hand-made catalog (no image files needed): 4 images, human boxes on two of them."""

from __future__ import annotations

import pyarrow as pa
import pytest

from actors.catalog.schema import IMAGES, LABELS, conform_labels


@pytest.fixture
def catalog_ws(workspace, tmp_path):
    rows = [{"image_id": f"im{i}", "uri": str(tmp_path / f"pics/im{i}.jpg"), "width": 100, "height": 80,
             "source": "test", "split": "pool", "status": "ok", "error": None} for i in range(4)]
    workspace.write_table(IMAGES, pa.Table.from_pylist(rows))
    labels = [{"image_id": "im0", "box_id": 0, "x0": 1.0, "y0": 2.0, "x1": 20.0, "y1": 30.0, "category": "circle",
               "source": "human", "status": "ok", "error": None},
              {"image_id": "im1", "box_id": 0, "x0": 5.0, "y0": 5.0, "x1": 15.0, "y1": 15.0, "category": "star",
               "source": "human", "status": "ok", "error": None}]
    workspace.write_table(LABELS, conform_labels(pa.Table.from_pylist(labels)))
    return workspace

"""Decoding reads every URI the catalog accepts through the workspace's filesystem layer (pyarrow.fs)."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from PIL import Image

from actors.core.images import PLACEHOLDER, decode_batch, load_image
from actors.core.workspace import Workspace, open_uri, resolve_uri


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _img(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (12, 20, 3), dtype=np.uint8)


def test_file_uri_images_decode_through_pyarrow_fs(tmp_path):
    img = _img()
    (tmp_path / "a b.png").write_bytes(_png(img))
    np.testing.assert_array_equal(load_image((tmp_path / "a b.png").as_uri()), img)  # file:///…/a%20b.png
    np.testing.assert_array_equal(load_image(str(tmp_path / "a b.png")), img)


def test_decode_batch_reads_uris_of_a_workspace_written_through_pyarrow_fs(tmp_path):
    ws = Workspace(f"file://{tmp_path}/ws")  # written through pyarrow.fs, read back by URI
    ws.write_bytes("img/x.png", _png(_img(1)))
    fs, path = resolve_uri(f"file://{tmp_path}/ws/img/x.png")
    assert fs.get_file_info(path).size > 0
    out = decode_batch({"image_id": np.array(["x", "gone"], object),
                        "uri": np.array([f"file://{tmp_path}/ws/img/x.png", f"file://{tmp_path}/ws/nope.png"], object)})
    np.testing.assert_array_equal(out["image"][0], _img(1))
    assert out["error"][0] == "" and out["error"][1].startswith("unreadable image: FileNotFoundError")
    assert out["image"][1] is PLACEHOLDER


@contextlib.contextmanager
def moto_s3():
    """A local S3 (moto server on a free port); yields the URI query that points pyarrow at it."""
    import os

    from moto.server import ThreadedMotoServer

    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        yield f"endpoint_override=127.0.0.1:{server._server.server_port}&scheme=http"
    finally:
        server.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def s3_endpoint():
    with moto_s3() as query:
        yield query


def test_s3_uri_images_are_decoded_not_only_ingested(s3_endpoint):
    from actors.catalog.ingest import check_image

    ws = Workspace(f"s3://bkt/?{s3_endpoint}&allow_bucket_creation=true")
    ws.fs.create_dir("bkt")
    with ws.fs.open_output_stream("bkt/pool/1.png") as f:
        f.write(_png(_img(2)))
    uri = f"s3://bkt/pool/1.png?{s3_endpoint}"
    assert check_image(uri)[2] == "ok"  # ingest accepts it …
    out = decode_batch({"image_id": np.array(["1"], object), "uri": np.array([uri], object)})
    assert out["error"][0] == ""  # … and embedding can decode it
    np.testing.assert_array_equal(out["image"][0], _img(2))
    with open_uri(uri) as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

"""``/embed``: JSON by default, ``.npy`` float32 on request, the same vectors either way."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.api.vectors import prefers_npy
from app.services.runtime import THUMBNAIL_MAX_BYTES, DecodedUpload
from tests.app.conftest import cifar_upload
from tests.conftest import PHOTOS


def test_embed_returns_unit_vectors(client: TestClient) -> None:
    body = client.post("/embed", files=cifar_upload("bird", 0, 3)).json()
    assert body["dim"] == 128 and len(body["embeddings"]) == 3
    vector = body["embeddings"][0]["vector"]
    assert sum(x * x for x in vector) == pytest.approx(1.0, abs=1e-3)
    assert client.post("/embed").status_code == 415  # neither multipart nor JSON


def test_npy_answer_holds_the_json_answers_vectors(client: TestClient) -> None:
    files = cifar_upload("cat", 0, 5)
    as_json = client.post("/embed", files=files).json()
    response = client.post("/embed", files=files, headers={"Accept": "application/x-npy"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-npy"
    assert response.headers["x-model-version"] == as_json["model_version"]
    assert response.headers["x-embedding-dim"] == "128"
    vectors = np.load(io.BytesIO(response.content), allow_pickle=False)
    assert vectors.dtype == np.float32 and vectors.shape == (5, 128)
    expected = np.array([e["vector"] for e in as_json["embeddings"]], dtype=np.float32)
    np.testing.assert_allclose(vectors, expected, atol=1e-6)  # rows in upload order
    # errors stay JSON whatever was asked for
    bad = client.post(
        "/embed",
        files=[("files", ("x.jpg", b"not an image", "image/jpeg"))],
        headers={"Accept": "application/x-npy"},
    )
    assert bad.status_code == 415 and "detail" in bad.json()


@pytest.mark.parametrize(
    ("accept", "npy"),
    [
        (None, False),
        ("", False),
        ("*/*", False),
        ("application/json", False),
        ("application/x-npy", True),
        ("application/x-npy, */*", True),
        ("application/json;q=0.5, application/x-npy", True),
        ("application/x-npy;q=0.5, application/json", False),
        ("application/x-npy;q=0", False),
        ("application/x-npy;q=nonsense", False),
        ("APPLICATION/X-NPY", True),
    ],
)
def test_accept_header_negotiation(accept: str | None, npy: bool) -> None:
    assert prefers_npy(accept) is npy


def test_an_upload_prepared_for_another_input_size_is_decoded_again(client: TestClient) -> None:
    """A model activated between decoding and embedding takes another input size: the
    upload's bytes are decoded again for it."""
    runtime = client.app.state.services.runtime  # type: ignore[attr-defined]
    ((name, (_, data, _)),) = cifar_upload("cat", 0, 1)
    (upload,) = runtime.decode([(name, data)])
    stale = DecodedUpload(name, data, "JPEG", torch.zeros((3, 16, 16), dtype=torch.uint8))
    embedder = runtime.snapshot.embedder
    expected = runtime.embed_uploads(embedder, [upload])
    np.testing.assert_array_equal(runtime.embed_uploads(embedder, [stale]), expected)


def test_thumbnails_are_decoded_on_the_inference_thread_with_the_same_vectors(
    client: TestClient,
) -> None:
    """Up to four small plain JPEGs are decoded where they are embedded; any other request
    gets None there (and ``/embed`` decodes it on a worker thread). The vectors are those of
    the usual path."""
    runtime = client.app.state.services.runtime  # type: ignore[attr-defined]
    embedder = runtime.snapshot.embedder
    files = [(name, data) for _, (name, data, _) in cifar_upload("bird", 0, 5)]
    inline = asyncio.run(runtime.embed_thumbnails(embedder, files[:4]))
    usual = runtime.embed_uploads(embedder, runtime.decode(files[:4]))
    np.testing.assert_allclose(inline, usual, atol=1e-4)
    png = io.BytesIO()
    Image.open(io.BytesIO(files[0][1])).save(png, "PNG")
    path = sorted((PHOTOS / "cat").iterdir())[0]
    photo = (path.name, path.read_bytes())
    assert len(photo[1]) > THUMBNAIL_MAX_BYTES or Image.open(path).width > 64
    truncated = (files[0][0], files[0][1][:-20])
    for refused in (files, [("x.png", png.getvalue())], [photo], [truncated], []):
        assert asyncio.run(runtime.embed_thumbnails(embedder, refused)) is None
    # over HTTP, both paths answer alike: a thumbnail alone, and the same pixels as PNG
    thumbnail = client.post("/embed", files=[("files", ("a.jpg", files[0][1], "image/jpeg"))])
    as_png = client.post("/embed", files=[("files", ("a.png", png.getvalue(), "image/png"))])
    np.testing.assert_allclose(
        thumbnail.json()["embeddings"][0]["vector"],
        as_png.json()["embeddings"][0]["vector"],
        atol=1e-4,
    )
    bad = client.post("/embed", files=[("files", ("t.jpg", truncated[1], "image/jpeg"))])
    assert bad.status_code == 400

"""Hostile and odd uploads through the API: clear 4xx, nothing stored; odd but valid images work."""

import io
import json

import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from PIL import Image

from app.api.bodies import MAX_JSON_DEPTH, StrictJSONRoute, nested_deeper_than, strict_json
from tests.app.conftest import item_count
from tests.conftest import image_bytes


def post_one(client: TestClient, payload: bytes, name: str = "x.png"):  # type: ignore[no-untyped-def]
    return client.post(
        "/items", files=[("files", (name, payload, "image/png"))], data={"labels": "x"}
    )


def test_decompression_bomb_is_refused_before_decoding(client: TestClient) -> None:
    buffer = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buffer, format="PNG")  # 81 Mpx in a tiny file
    assert len(buffer.getvalue()) < 100_000
    response = post_one(client, buffer.getvalue())
    assert response.status_code == 413 and "pixels" in response.json()["detail"]
    assert item_count(client) == 0


def test_many_frame_gif_uses_its_first_frame(client: TestClient) -> None:
    frames = [Image.new("RGB", (32, 32), (i, 0, 0)) for i in range(200)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    assert post_one(client, buffer.getvalue(), "anim.gif").status_code == 201


@pytest.mark.parametrize(
    ("payload", "name"),
    [
        (image_bytes("JPEG", mode="CMYK"), "cmyk.jpg"),
        (image_bytes("PNG", mode="I;16"), "deep.png"),
        (image_bytes("PNG", mode="RGBA"), "alpha.png"),
        (image_bytes("PNG", size=(1, 1)), "dot.png"),
        (image_bytes("BMP"), "x.bmp"),
        (image_bytes("WEBP"), "x.webp"),
        (image_bytes("PNG"), "named-wrong.jpg"),
    ],
)
def test_odd_but_valid_images_are_embedded(client: TestClient, payload: bytes, name: str) -> None:
    response = client.post("/embed", files=[("files", (name, payload, "application/octet-stream"))])
    assert response.status_code == 200, response.text
    vector = response.json()["embeddings"][0]["vector"]
    assert abs(sum(x * x for x in vector) - 1) < 1e-3


def test_malformed_multipart_is_a_400(client: TestClient) -> None:
    response = client.post(
        "/items",
        content=b'--b\r\nContent-Disposition: form-data; name="files"\r\n\r\nunterminated',
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert 400 <= response.status_code < 500
    assert item_count(client) == 0


def test_content_length_over_the_limit_is_refused_before_reading(client: TestClient) -> None:
    response = client.post(
        "/embed",
        content=b"x" * 10,
        headers={"content-type": "multipart/form-data; boundary=b", "content-length": str(10**10)},
    )
    assert response.status_code == 413


def test_too_many_fields(client: TestClient) -> None:
    fields = {f"f{i}": "x" for i in range(1200)}
    response = client.post(
        "/items", data=fields, files=[("files", ("a.png", image_bytes(), "image/png"))]
    )
    assert response.status_code == 400
    assert item_count(client) == 0


def test_nan_and_infinity_are_not_json(client: TestClient) -> None:
    """Python's JSON parser reads them; the service refuses them wherever it parses JSON, so
    none is stored (it would break every later listing) or quoted back in a 422."""
    json_body = {"content-type": "application/json"}
    for body in (b'{"id": 1, "k": Infinity}', b'{"vector": [NaN], "k": 3}'):
        response = client.post("/search", content=body, headers=json_body)
        assert response.status_code == 400, response.text
    response = client.post("/cluster", content=b'{"k": NaN}', headers=json_body)  # FastAPI's
    assert response.status_code == 422 and "NaN is not a JSON value" in response.text
    assert response.json()["detail"][0]["loc"] == ["body", 6]  # where the NaN is
    for text in ("Infinity", '{"metadata.x": NaN}', '{"label": -Infinity}'):
        response = client.get("/items", params={"filter": text})
        assert response.status_code == 422 and "not a JSON value" in response.text
    upload = [("files", ("a.png", image_bytes(), "image/png"))]
    response = client.post("/items", files=upload, data={"metadata": '{"x": NaN}'})
    assert response.status_code == 400 and "NaN is not a JSON value" in response.text
    assert item_count(client) == 0


def nested(depth: int) -> str:
    return '{"a": ' * (depth - 1) + "[1]" + "}" * (depth - 1)


def test_deeply_nested_json_is_refused_wherever_it_is_read(client: TestClient) -> None:
    """Past a few hundred levels no answer could quote or list it (stored metadata would
    break every later listing), and near a thousand the parser itself gives up: every route
    refuses JSON nested deeper than the limit with a 4xx, and stores nothing."""
    assert nested(MAX_JSON_DEPTH).count("[") == 1 and not nested_deeper_than(
        json.loads(nested(MAX_JSON_DEPTH)), MAX_JSON_DEPTH
    )
    json_body = {"content-type": "application/json"}
    upload = [("files", ("a.png", image_bytes(), "image/png"))]
    for depth in (MAX_JSON_DEPTH + 1, 300, 100_000):
        deep = nested(depth)
        for path in ("/search", "/embed", "/items", "/train"):
            response = client.post(path, content=deep, headers=json_body)
            assert response.status_code == 400, (path, depth, response.text)
            assert f"nested more than {MAX_JSON_DEPTH} levels" in response.text
        response = client.post("/cluster", content=deep, headers=json_body)  # FastAPI's
        assert response.status_code == 422, response.text
        response = client.post("/items", files=upload, data={"metadata": deep})
        assert response.status_code == 400, response.text
    response = client.get("/items", params={"filter": nested(MAX_JSON_DEPTH + 1)})
    assert response.status_code == 422 and "nested more than" in response.text
    assert item_count(client) == 0
    metadata = json.loads(nested(MAX_JSON_DEPTH))
    response = client.post("/items", files=upload, data={"metadata": json.dumps(metadata)})
    assert response.status_code == 201, response.text
    assert client.get("/items").json()["items"][0]["metadata"] == metadata


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
def test_a_refused_constant_is_reported_where_it_is(encoding: str) -> None:
    """Not where the same word stands inside a string before it."""
    document = '{"note": "NaN \\" Infinity", "x": [1, -Infinity]}'
    with pytest.raises(json.JSONDecodeError) as refused:
        strict_json(document.encode(encoding))
    assert refused.value.msg == "-Infinity is not a JSON value"
    assert refused.value.pos == document.index("-Infinity") == 37


def test_every_route_parses_json_strictly(client: TestClient) -> None:
    """A router made without ``route_class=StrictJSONRoute`` would take NaN in its bodies."""
    routes = [
        context.original_route
        for context in iter_route_contexts(client.app.routes)  # type: ignore[attr-defined]
        if isinstance(context.original_route, APIRoute)
    ]
    assert len(routes) > 20
    assert all(isinstance(route, StrictJSONRoute) for route in routes)

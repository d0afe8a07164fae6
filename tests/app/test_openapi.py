import json

from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import ROOT


def test_exported_schema_has_not_drifted() -> None:
    """docs/openapi.json is regenerated with `triplet-embed openapi --out docs/openapi.json`."""
    current = json.loads(json.dumps(create_app().openapi()))
    assert current == json.loads((ROOT / "docs" / "openapi.json").read_text())


def test_every_endpoint_of_the_design_is_documented() -> None:
    paths = create_app().openapi()["paths"]
    expected = {
        "/healthz": {"get"},
        "/readyz": {"get"},
        "/metrics": {"get"},
        "/model": {"get"},
        "/models": {"get"},
        "/models/{version}/activate": {"post"},
        "/embed": {"post"},
        "/items": {"get", "post"},
        "/items/{item_id}": {"get", "put", "delete"},
        "/items/{item_id}/image": {"get"},
        "/ui": {"get"},
        "/search": {"post"},
        "/cluster": {"post"},
        "/train": {"get", "post"},
        "/train/{job_id}": {"get", "delete"},
        "/vectors": {"get"},
        "/imports": {"get", "post"},
        "/imports/{import_id}": {"get", "delete"},
    }
    assert {path: set(ops) for path, ops in paths.items()} == expected
    for path, ops in paths.items():
        for op in ops.values():
            assert op.get("summary"), path
    for path in ("/search", "/embed", "/items"):
        content = paths[path]["post"]["requestBody"]["content"]
        assert set(content) == {"multipart/form-data", "application/json"}, path


def test_every_reference_resolves() -> None:
    schema = create_app().openapi()
    text = json.dumps(schema)
    refs = {part.split('"')[0] for part in text.split('"$ref": "#/components/schemas/')[1:]}
    assert refs and refs <= set(schema["components"]["schemas"])
    for name in ("SearchQuery", "TrainRequest", "ClusterRequest"):
        assert schema["components"]["schemas"][name]["examples"]


def test_405_lists_every_method_the_path_serves(client: TestClient) -> None:
    for path, methods in (
        ("/items", "GET, POST"),
        ("/items/1", "DELETE, GET, PUT"),
        ("/train", "GET, POST"),
    ):
        response = client.request("OPTIONS", path)
        assert response.status_code == 405 and response.headers["allow"] == methods


def test_the_served_document_states_run_time_limits_and_links(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    vector = schemas["SearchQuery"]["properties"]["vector"]
    assert vector["minItems"] == vector["maxItems"] == 128  # the active model's dimension
    k = next(c for c in schemas["ClusterRequest"]["properties"]["k"]["anyOf"] if "type" in c)
    assert k["maximum"] == 1000  # EMBED_MAX_K
    add_items = document["paths"]["/items"]["post"]["requestBody"]["content"]
    files = add_items["multipart/form-data"]["schema"]["properties"]["files"]
    assert (files["minItems"], files["maxItems"]) == (1, 64)  # EMBED_MAX_FILES
    assert schemas["ItemsJson"]["properties"]["images"]["maxItems"] == 64
    batch_vector = schemas["SearchTarget"]["properties"]["vector"]
    assert batch_vector["minItems"] == batch_vector["maxItems"] == 128
    created = document["paths"]["/items"]["post"]["responses"]["201"]["links"]
    assert created["GetItem"] == {
        "operationId": "get_item",
        "parameters": {"item_id": "$response.body#/items/0/id"},
    }
    assert set(document["paths"]["/train"]["post"]["responses"]["202"]["links"]) == {
        "GetJob",
        "CancelJob",
    }


def test_every_status_the_routes_answer_is_documented() -> None:
    paths = create_app().openapi()["paths"]
    assert {"409", "422"} <= set(paths["/cluster"]["post"]["responses"])  # no items; schema
    assert {"403", "409", "415", "422"} <= set(paths["/train"]["post"]["responses"])
    assert {"404", "413", "415", "422"} <= set(paths["/search"]["post"]["responses"])

import json

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
        "/items/{item_id}": {"get", "delete"},
        "/items/{item_id}/image": {"get"},
        "/ui": {"get"},
        "/search": {"post"},
        "/cluster": {"post"},
        "/train": {"get", "post"},
        "/train/{job_id}": {"get", "delete"},
    }
    assert {path: set(ops) for path, ops in paths.items()} == expected
    for path, ops in paths.items():
        for op in ops.values():
            assert op.get("summary"), path
    search = paths["/search"]["post"]["requestBody"]["content"]
    assert set(search) == {"multipart/form-data", "application/json"}


def test_every_reference_resolves() -> None:
    schema = create_app().openapi()
    text = json.dumps(schema)
    refs = {part.split('"')[0] for part in text.split('"$ref": "#/components/schemas/')[1:]}
    assert refs and refs <= set(schema["components"]["schemas"])
    for name in ("SearchQuery", "TrainRequest", "ClusterRequest"):
        assert schema["components"]["schemas"][name]["examples"]

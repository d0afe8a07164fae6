"""The settings: every one is documented, and bad values stop the service at start-up."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.settings import Settings
from tests.conftest import ROOT


def test_every_setting_is_in_the_readmes_configuration_table() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Configuration") :]
    variables = [f"EMBED_{name.upper()}" for name in Settings.model_fields]
    assert [v for v in variables if f"| `{v}` |" not in table] == []


@pytest.mark.parametrize(
    "url", ["sqlite:///x.db", "mysql://db/embed", "db-host:5432", "postgresql"]
)
def test_a_database_url_that_is_not_postgresql_is_refused(url: str) -> None:
    with pytest.raises(ValidationError, match="postgresql://"):
        Settings(database_url=url)


def test_an_empty_database_url_means_the_embedded_store() -> None:
    assert Settings(database_url="").database_url is None
    assert Settings(database_url="postgres://u@h/db").database_url == "postgres://u@h/db"

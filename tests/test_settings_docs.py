"""docs/configuration.md and the README's first-settings table are generated from
Settings; these fail when either disagrees with the code (regenerate with
``python -m coverservice.settings_docs --write``)."""

from __future__ import annotations

import pytest

from coverservice import settings_docs
from coverservice.settings import Settings

REGENERATE = "run: python -m coverservice.settings_docs --write"


def test_the_configuration_document_is_generated_from_settings() -> None:
    assert settings_docs.CONFIGURATION.read_text() == settings_docs.configuration(), REGENERATE


def test_the_readme_lists_the_first_settings_as_settings_says() -> None:
    readme = settings_docs.README.read_text()
    assert settings_docs.readme_with_first_settings(readme) == readme, REGENERATE


def test_every_setting_is_documented_once_and_described() -> None:
    document = settings_docs.configuration()
    for name in Settings.model_fields:
        assert document.count(f"| `{settings_docs.variable(name)}` |") == 1, name
    assert set(settings_docs.FIRST) <= set(Settings.model_fields)
    assert len(settings_docs.FIRST) == 10


def test_a_setting_without_a_description_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    field = Settings.model_fields["log_level"]
    monkeypatch.setattr(field, "description", None)
    with pytest.raises(ValueError, match="Settings.log_level has no docstring"):
        settings_docs.configuration()


def test_defaults_are_the_code_s() -> None:
    document = settings_docs.configuration()
    assert "| `COVERSERVICE_STORAGE_URL` | text | `file://$PWD/coverservice-data` |" in document
    assert "| `COVERSERVICE_SELECTION_HYSTERESIS` | number ≥ 0 | `0.1` |" in document
    assert "| `COVERSERVICE_LOG_LEVEL` | `debug` / `info` / `warning` / `error` | `info` |" in document

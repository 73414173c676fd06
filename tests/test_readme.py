"""The README stays true: every setting is documented, and the quick start is the two commands."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from flowforge import settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _settings(model: type[BaseModel], prefix: str = "", env: str = "FLOWFORGE_"):
    for name, field in model.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            yield from _settings(type(default), f"{prefix}{name}.", f"{env}{name.upper()}__")
        else:
            yield f"{prefix}{name}", f"{env}{name.upper()}"


def test_every_setting_is_in_the_configuration_table():
    missing = [f"{path} ({env})" for path, env in _settings(settings.Settings)
               if f"`{path}`" not in README or f"`{env}`" not in README]
    assert not missing, f"README configuration table lacks: {missing}"


def test_quick_start_is_make_demo_and_make_test():
    quick = README.split("```", 2)[1]
    assert [line.split("#")[0].strip() for line in quick.strip().splitlines()] == ["make demo", "make test"]

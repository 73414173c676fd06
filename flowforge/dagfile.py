"""Reading a DAG from a file: YAML or JSON text, or a Python module written with the SDK."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

from flowforge import errors, sdk
from flowforge.domain import validation


def load(path: Path) -> dict[str, Any]:
    """The DAG in `path` as a JSON-ready mapping (not yet validated: the API validates).

    A `.py` file must be importable from the current directory (e.g. `examples/pipeline.py` is
    `examples.pipeline`), because agents import its task functions by that name; it defines a
    module-level `sdk.DAG`, or a `build()` that returns one."""
    if path.suffix == ".py":
        return _from_python(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise errors.InvalidInput("FILE", f"cannot read {path}: {exc.strerror}", "check the path") from None
    except UnicodeDecodeError as exc:
        raise errors.InvalidInput("FILE", f"{path} is not UTF-8 text (byte {exc.start})",
                                  "save the file as UTF-8") from None
    data = validation.load_text(text)
    if not isinstance(data, dict):
        raise validation.SpecError([validation.Problem("$", "a DAG file must hold a mapping", "write `name:` and `tasks:`")])
    return _json_ready(data)


def _json_ready(data: Any) -> dict[str, Any]:
    """YAML dates and the like become strings; NaN and Infinity, which JSON cannot carry, are refused."""
    try:
        return json.loads(json.dumps(data, default=str, allow_nan=False))
    except ValueError:
        raise errors.InvalidInput("FILE", "a value is NaN or Infinity (.nan, .inf), which JSON cannot carry",
                                  "use a number or a quoted string") from None


def _from_python(path: Path) -> dict[str, Any]:
    try:
        rel = path.resolve().relative_to(Path.cwd())
    except ValueError:
        raise errors.InvalidInput(
            "FILE", f"{path} is outside the current directory",
            "run from the project root that agents import from, so the module has an importable name",
        ) from None
    module_name = ".".join(rel.with_suffix("").parts)
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise errors.InvalidInput("FILE", f"importing {module_name} failed: {exc!r}", "fix the module") from None
    dags = [v for v in vars(module).values() if isinstance(v, sdk.DAG)]
    build = getattr(module, "build", None)
    if not dags and callable(build):
        try:
            built = build()
        except Exception as exc:
            raise errors.InvalidInput("FILE", f"{module_name}.build() failed: {exc!r}", "fix build()") from None
        dags = [built] if isinstance(built, sdk.DAG) else []
    if len(dags) != 1:
        raise errors.InvalidInput(
            "FILE", f"{module_name} defines {len(dags)} DAGs", "define exactly one sdk.DAG, or a build() returning it"
        )
    try:
        return _json_ready(dags[0].to_dict())
    except (TypeError, ValueError) as exc:  # an SDK value JSON cannot carry
        raise errors.InvalidInput("FILE", f"{module_name}: {exc}", "use JSON values in the DAG") from None

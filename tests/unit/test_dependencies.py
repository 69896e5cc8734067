"""pyproject.toml declares what the code imports, above known-vulnerable versions."""

from __future__ import annotations

import tomllib

from packaging.requirements import Requirement

from paystream.settings import PROJECT_ROOT


def _declared() -> dict[str, Requirement]:
    deps = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {(r := Requirement(d)).name.lower(): r for d in deps}


def test_floors_exclude_known_vulnerable_versions() -> None:
    declared = _declared()
    for name, vulnerable, fixed in [("starlette", "0.47.1", "0.49.1"), ("pyjwt", "2.10.0", "2.10.1")]:
        assert name in declared, f"{name} is not declared"
        assert vulnerable not in declared[name].specifier, (name, str(declared[name].specifier))
        assert fixed in declared[name].specifier, (name, str(declared[name].specifier))


def test_directly_imported_packages_are_declared() -> None:
    declared = _declared()
    for name in ("orjson", "httpx", "httpcore", "fastapi", "starlette", "redis", "cryptography"):
        assert name in declared, f"{name} is imported by the code but not declared"

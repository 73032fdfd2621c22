"""The import contracts of pyproject.toml ([tool.importlinter], checked by `lint-imports` in
`make test`) stay complete as p2m_core grows: a forbidden contract names what pseudo may not
import, so a new module of p2m_core must join that list or the rule silently stops covering it."""

from __future__ import annotations

import pkgutil
import tomllib
from pathlib import Path

import p2m_core

ROOT = Path(__file__).resolve().parents[1]
PSEUDO_MAY_IMPORT = {"p2m_core.config", "p2m_core.errors"}


def contracts() -> dict[str, dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["id"]: c for c in config["contracts"]}


def test_pseudo_contract_forbids_every_other_module_of_p2m_core() -> None:
    modules = {f"p2m_core.{m.name}" for m in pkgutil.iter_modules(p2m_core.__path__)}
    contract = contracts()["pseudo"]
    assert contract["source_modules"] == ["p2m_core.pseudo"]
    assert set(contract["forbidden_modules"]) == modules - PSEUDO_MAY_IMPORT - {"p2m_core.pseudo"}


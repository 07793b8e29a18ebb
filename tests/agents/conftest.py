from __future__ import annotations

import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from gateway.agents import AgentBook, load_agents
from gateway.agents.python_tools import ModuleRules

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "agents.toml"


@pytest.fixture(autouse=True)
def _isolated_imports(monkeypatch):
    """The loader puts the listed module directories on sys.path: undo it after each test."""
    monkeypatch.setattr(sys, "path", list(sys.path))


@pytest.fixture
def write(tmp_path):
    """Write an agents file (dedented) into a fresh directory and return its path."""

    def write(text: str, name: str = "agents.toml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


@pytest.fixture
def module_name() -> str:
    """A module name no other test uses (imported modules stay in sys.modules)."""
    return f"tools_{uuid.uuid4().hex[:12]}"


def load(
    path: Path,
    *,
    production: bool = False,
    configured=("openai", "echo"),
    modules: ModuleRules | None = None,
) -> AgentBook:
    """Load ``path``; handler modules from its directory (listed, as VOICEGW_TOOL_MODULES_PATH
    would) unless ``modules`` says otherwise."""
    if modules is None:
        modules = ModuleRules(paths=(path.parent,), forbidden=(path.parent / "data",))
    return load_agents(
        path, configured_providers=configured, production=production, modules=modules
    )

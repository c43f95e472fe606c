"""The layout's rules (docs/architecture.md): packages import only the packages above them, modules
stay short or say why, and `import fcagent` / the CLI load nothing heavy."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fcagent"
LAYERS = ["core", "tasks", "agent", "tracing", "data", "models", "training", "routing", "serving", "pipeline", "cli"]
MAX_LINES = 450


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "fcagent" and parts[1] in LAYERS else None


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every fcagent module `path` imports, at any depth (imports inside functions count too)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fcagent"):
            out += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names
                                                    if node.module == "fcagent"]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("fcagent")]
    return out


def test_every_package_imports_only_the_packages_above_it():
    wrong = []
    for path in _modules():
        own = _layer("fcagent." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
        if own is None:
            continue
        for line, module in _imports(path):
            other = _layer(module)
            if other is not None and LAYERS.index(other) > LAYERS.index(own):
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({own}) imports {module} ({other})")
    assert not wrong, "\n".join(wrong)


def test_long_modules_say_why_at_their_top():
    unexplained = []
    for path in _modules():
        lines = path.read_text().splitlines()
        docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
        if len(lines) > MAX_LINES and "one module" not in docstring:
            unexplained.append(f"{path.relative_to(PACKAGE.parent)}: {len(lines)} lines")
    assert not unexplained, "\n".join(unexplained)


@pytest.mark.parametrize("statement", ["import fcagent", "import fcagent.cli.app"])
def test_importing_fcagent_or_its_cli_loads_nothing_heavy(statement):
    heavy = ["langgraph", "langchain", "langchain_core", "torch", "transformers", "trl", "pydantic", "fastapi"]
    code = f"import sys; {statement}; print(','.join(m for m in {heavy!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == ""


def test_public_names_resolve_lazily_and_unknown_ones_raise():
    import fcagent

    for name in fcagent.__all__:
        assert getattr(fcagent, name) is not None
    with pytest.raises(AttributeError, match="no_such_name"):
        fcagent.no_such_name  # noqa: B018

"""The house rules the code keeps (docs/design.md, "Layout"): imports only go down the layers,
the API, CLI and loader reach the registry through the facade and its public types alone,
every module says its job, and no module or function outgrows its room."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(
    path
    for folder in ("registry", "cli", "migrations")
    for path in (ROOT / folder).rglob("*.py")
    if "testing" not in path.parts
)
MAX_FILE_LINES = 800
MAX_FUNCTION_LINES = 100

# Bottom to top: a module imports only modules of its own layer or below.
LAYERS: list[tuple[str, ...]] = [
    (
        "registry.errors",
        "registry.digest",
        "registry.refs",
        "registry.retention",
        "registry.safetensors_header",
        "registry.events",
        "registry.fileio",
        "registry.roles",
    ),
    ("registry.storage",),
    ("registry.crypto",),
    (
        "registry.config",
        "registry.records",
        "registry.reports",
        "registry.manifest",
        "registry.provenance",
        "registry.materialize",
        "registry.prepared",
        "registry.wire",
    ),
    ("registry.blobstore",),
    ("registry.catalog", "registry.replication", "registry.journal", "registry.redis_counters"),
    ("registry.rebuild",),
    ("registry.ops",),
    ("registry.service", "registry.service_browsing"),
    ("registry.client", "registry.api", "registry.loader", "cli"),
    ("registry.integrations",),
]
# What the API, the CLI and the loader may import of the registry: the facade and the public
# vocabulary; never the catalog, the stores, the replicas or the operations behind it.
PUBLIC = (
    "registry.service",
    "registry.client",
    "registry.records",
    "registry.reports",
    "registry.wire",
    "registry.errors",
    "registry.refs",
    "registry.config",
    "registry.retention",
    "registry.manifest",
    "registry.provenance",
    "registry.materialize",
    "registry.prepared",
    "registry.safetensors_header",
    "registry.digest",
    "registry.fileio",
    "registry.roles",
)
UPPER = ("registry.api", "registry.loader", "cli", "registry.client", "registry.integrations")
# The loader and the client decrypt in their own memory, with the one sealed-format opener.
EXCEPTIONS = {
    "registry.loader": ("registry.crypto.sealed",),
    "registry.client": ("registry.crypto.sealed",),
    # KServe's storage initializer (cli/kserve.py) warms the loader's ciphertext cache.
    "cli": ("registry.loader.cache",),
    # The engines' integrations stream weights through the loader.
    "registry.integrations": ("registry.loader",),
}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _layer(name: str) -> int | None:
    for index, layer in enumerate(LAYERS):
        if any(_within(name, prefix) for prefix in layer):
            return index
    return None


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from registry import journal` imports a module, not the package
            modules = [f"{node.module}.{alias.name}" for alias in node.names]
            named = [name for name in modules if _known(name)]
            found += [(node.lineno, name) for name in named] or [(node.lineno, node.module)]
    return [
        (line, name) for line, name in found if _within(name, "registry") or _within(name, "cli")
    ]


def _known(name: str) -> bool:
    return (ROOT / (name.replace(".", "/") + ".py")).exists() or (
        ROOT / name.replace(".", "/") / "__init__.py"
    ).exists()


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_down(path: Path) -> None:
    module = _module(path)
    own = _layer(module)
    if own is None or module == "registry":
        return  # the package's own __init__ re-exports the facade; migrations stand apart
    wrong = [
        f"line {line}: {name}"
        for line, name in _imports(path)
        if _known(name) and (layer := _layer(name)) is not None and layer > own
    ]
    assert not wrong, f"{module} imports from above its layer: {wrong}"


@pytest.mark.parametrize(
    "path",
    [p for p in SOURCES if any(_within(_module(p), upper) for upper in UPPER)],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_the_upper_layers_use_only_the_facade(path: Path) -> None:
    module = _module(path)
    top = next(upper for upper in UPPER if _within(module, upper))
    allowed = (*PUBLIC, top, "cli", *EXCEPTIONS.get(top, ()))
    wrong = [
        f"line {line}: {name}"
        for line, name in _imports(path)
        if _known(name) and name != "registry" and not any(_within(name, a) for a in allowed)
    ]
    assert not wrong, f"{module} reaches around the facade: {wrong}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_says_its_job_and_fits_its_room(path: Path) -> None:
    text = path.read_text()
    tree = ast.parse(text)
    if path.name != "__init__.py" or text.strip():
        assert ast.get_docstring(tree), f"{path.name} has no docstring saying its job"
    assert text.count("\n") <= MAX_FILE_LINES, f"{path.name} is over {MAX_FILE_LINES} lines"
    lines = text.split("\n")
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            first = min([d.lineno for d in node.decorator_list] + [node.lineno])
            reason = any("long:" in line for line in lines[max(0, first - 3) : node.lineno])
            assert length <= MAX_FUNCTION_LINES or reason, (
                f"{path.name}: {node.name} is {length} lines; split it or say why beside it "
                "(a `# long: ...` comment above it)"
            )

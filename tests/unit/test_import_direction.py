"""Imports run one way along the pipeline: recipe/ -> checkpoints/ -> plan -> execute -> output.

Every module under src/mergesmith is parsed (not imported), and every import it makes is checked
against RULES: top-level ones, ones inside functions (lazy imports are still dependencies),
`from . import x` resolved against the module's package, and `importlib.import_module("...")` with
a literal name. To add a rule, add a row to RULES; the groups below name the modules of each stage.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

# A name covers the module and everything below it ("mergesmith.execute" covers execute.py and an
# execute/ package alike), but not a sibling with a longer name ("mergesmith.plan" is not
# "mergesmith.plan_checks", so the plan side lists its modules).
RECIPE = ("mergesmith.recipe",)
CHECKPOINTS = ("mergesmith.checkpoints",)
METHODS = ("mergesmith.methods",)
PLAN = (
    "mergesmith.plan",
    "mergesmith.plan_checks",
    "mergesmith.plan_fp8",
    "mergesmith.plan_parameters",
    "mergesmith.plan_vocabulary",
)
EXECUTE = (
    "mergesmith.execute",
    "mergesmith.vocabulary",  # the Vocabulary a plan carries, and align_rows: execution's side
)
WRITE = ("mergesmith.output",)
ENTRY = ("mergesmith.api", "mergesmith.cli", "mergesmith.driver")


@dataclass(frozen=True)
class Rule:
    importer: str  # a module name; the rule covers it and everything below it
    forbidden: tuple[str, ...]
    why: str


RULES = [
    Rule(
        "mergesmith.recipe",
        CHECKPOINTS + METHODS + PLAN + EXECUTE + WRITE + ENTRY,
        "recipe/ is the first stage: what it must know of methods arrives as plain data (recipe.MethodNames)",
    ),
    Rule(
        "mergesmith.methods",
        RECIPE + CHECKPOINTS + PLAN + EXECUTE + WRITE + ENTRY,
        "a method is a spec plus a pure tensor function: it reads no recipe and no files",
    ),
    Rule(
        "mergesmith.checkpoints",
        RECIPE + METHODS + PLAN + EXECUTE + WRITE + ENTRY,
        "checkpoints/ reads model files and knows nothing of recipes, methods or plans",
    ),
    Rule(
        "mergesmith.execute",
        RECIPE + ENTRY,
        "execution sees plans, not recipes: a task carries plan entries, input locations and settings",
    ),
    Rule(
        "mergesmith.output",
        RECIPE + ("mergesmith.execute",) + ENTRY,
        "output files are written from the plan and the shard layout, whatever backend wrote the shards",
    ),
    Rule(
        "mergesmith.vocabulary",
        RECIPE + PLAN + ENTRY,
        "execution's vocabulary module takes a built Vocabulary; building one from the recipe is plan_vocabulary.py's",
    ),
]


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, "mergesmith.recipe.load"
    line: int
    target: str  # the imported module, "mergesmith.methods"


def module_name(path: Path, root: Path = SRC) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path = SRC) -> list[Import]:
    """Every module `path` imports, wherever in the file the import statement is."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [Import(name, node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `from ..x import y` in mergesmith.a.b is mergesmith.x
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            found.append(Import(name, node.lineno, base))
            # `from mergesmith import methods` imports the module mergesmith.methods
            found += [Import(name, node.lineno, f"{base}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Call) and _is_import_call(node):
            found.append(Import(name, node.lineno, node.args[0].value))  # type: ignore[attr-defined]
    return found


def _is_import_call(node: ast.Call) -> bool:
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    literal = bool(node.args) and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
    return called in ("import_module", "__import__") and literal


def covers(prefix: str, name: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(rule: Rule, modules: dict[str, list[Import]]) -> list[str]:
    bad: dict[tuple[str, int], str] = {}  # one per statement: `from m import a, b` is m's line
    for name, found in modules.items():
        for imp in found if covers(rule.importer, name) else ():
            if any(covers(forbidden, imp.target) for forbidden in rule.forbidden):
                bad.setdefault((imp.module, imp.line), imp.target)
    return [
        f"{module} (line {line}) imports {target}, which the rule for {rule.importer} forbids: {rule.why}"
        for (module, line), target in bad.items()
    ]


@pytest.fixture(scope="module")
def modules() -> dict[str, list[Import]]:
    return {module_name(path): imports_of(path) for path in sorted((SRC / "mergesmith").rglob("*.py"))}


@pytest.mark.parametrize("rule", RULES, ids=[rule.importer for rule in RULES])
def test_imports_run_one_way(rule: Rule, modules: dict[str, list[Import]]) -> None:
    problems = violations(rule, modules)
    assert not problems, "imports against the pipeline's direction:\n" + "\n".join(problems)


def test_every_module_the_rules_name_exists(modules: dict[str, list[Import]]) -> None:
    """A misspelt or moved name would make its rule pass without checking anything."""
    named = {rule.importer for rule in RULES} | {name for rule in RULES for name in rule.forbidden}
    missing = sorted(name for name in named if not any(covers(name, module) for module in modules))
    assert not missing, f"RULES name modules that do not exist under src/: {', '.join(missing)}"


@pytest.mark.parametrize(
    ("source", "target"),
    [
        # a lazy import inside a function is found
        ("def f():\n    from mergesmith.methods import METHODS\n", "mergesmith.methods"),
        # a submodule imported by name from its package
        ("from mergesmith import methods\n", "mergesmith.methods"),
        # relative, from mergesmith/recipe/load.py: `..` is the mergesmith package
        ("from ..methods.spec import Param\n", "mergesmith.methods.spec"),
        ("from . import schema\n", "mergesmith.recipe.schema"),
        # a literal name given to importlib
        ("import importlib\nimportlib.import_module('mergesmith.plan')\n", "mergesmith.plan"),
    ],
)
def test_imports_are_found(source: str, target: str, tmp_path: Path) -> None:
    """The scanner sees each way of writing an import (checked on a module written under tmp_path)."""
    package = tmp_path / "mergesmith" / "recipe"
    package.mkdir(parents=True)
    (package / "load.py").write_text(source)
    assert target in {imp.target for imp in imports_of(package / "load.py", tmp_path)}

"""Regenerate the table that ends docs/errors.md ("Every error mergesmith raises") from the source:
each `raise` of a MergesmithError subclass with a message, `{...}` standing for the values filled in.

    python tools/error_table.py            # rewrite docs/errors.md in place
    python tools/error_table.py --check    # exit 1 if the table is out of date
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "mergesmith"
DOC = ROOT / "docs" / "errors.md"
HEADING = "## Every error mergesmith raises"
CLASSES = {"MergesmithError", "RecipeError", "CheckpointError", "PlanError", "MergeError", "OutputError",
           "UnsupportedError", "ClusterError", "LayerConfigError", "AccessError", "BusyError"}  # fmt: skip


def _text(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            elif isinstance(value, ast.FormattedValue):
                parts.append("{" + ast.unparse(value.value) + "}")
        return "".join(parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _text(node.left), _text(node.right)
        return None if left is None or right is None else left + right
    return None


def rows() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Raise) or not isinstance(node.exc, ast.Call):
                continue
            name = node.exc.func
            cls = name.id if isinstance(name, ast.Name) else name.attr if isinstance(name, ast.Attribute) else None
            if cls not in CLASSES or not node.exc.args:
                continue
            message = _text(node.exc.args[0])
            if message:
                where = path.relative_to(PACKAGE).as_posix()
                shown = message.replace("|", "\\|").replace("\n", " ")
                found.append(f"| `{where}` | {cls} | {shown} |")
    return found


def render(doc: str) -> str:
    head, _, _ = doc.partition(HEADING)
    intro = (
        f"{HEADING}\n\nGenerated from the source by tools/error_table.py (each `raise` of a user-facing error, "
        "`{...}` standing for the values filled in); the examples above show them filled in.\n\n"
        "| where | class | message |\n| --- | --- | --- |\n"
    )
    return head + intro + "\n".join(rows()) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    doc = DOC.read_text()
    new = render(doc)
    if args.check:
        sys.exit(0 if new == doc else 1)
    DOC.write_text(new)


if __name__ == "__main__":
    main()

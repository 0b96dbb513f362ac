#!/usr/bin/env python3
"""Check the package's import structure: no module-level import circle, and imports only going down the layers
ops -> spectral -> policies -> optim (plus the leaves ``_checks``, ``layers``, ``dist_exit`` and the top-level
front doors). Function-level and TYPE_CHECKING imports are not counted (they do not run at import time).

    python scripts/import_layers.py        # exit 1 and a list of the offending imports, else "ok"
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "llr_kernels"
RANK = {"_checks": 0, "dist_exit": 0, "ops": 1, "layers": 1, "spectral": 2, "policies": 3, "optim": 4,
        "integrations": 5, "analysis": 5}  # a subpackage may import only ranks below or equal to its own


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def top_level_imports(path: Path, name: str) -> set[str]:
    tree = ast.parse(path.read_text())
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in tree.body:  # module level only
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        nodes = [node] if not isinstance(node, (ast.If, ast.Try)) else list(ast.walk(node))
        for n in nodes:
            if isinstance(n, ast.ImportFrom):
                if n.level:
                    base = pkg.split(".")
                    base = base[: len(base) - (n.level - 1)]
                    mod = ".".join(base + ([n.module] if n.module else []))
                else:
                    mod = n.module or ""
                if mod.startswith("llr_kernels"):
                    out.add(mod)
                    for a in n.names:  # "from . import x" may name a submodule
                        out.add(f"{mod}.{a.name}")
            elif isinstance(n, ast.Import):
                out |= {a.name for a in n.names if a.name.startswith("llr_kernels")}
    return out


def main() -> int:
    mods = {module_name(p): p for p in PKG.rglob("*.py")}
    graph = {m: {i for i in top_level_imports(p, m) if i in mods and i != m} for m, p in mods.items()}
    problems = []
    for m, deps in graph.items():
        parts = m.split(".")
        if len(parts) < 2:
            continue
        for d in deps:
            dp = d.split(".")
            if len(dp) < 2 or dp[1] == parts[1]:
                continue
            a, b = RANK.get(parts[1]), RANK.get(dp[1])
            if a is not None and b is not None and b > a:
                problems.append(f"{m} imports {d}: {dp[1]} is above {parts[1]}")
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                problems.append("import circle: " + " -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    for p in problems:
        print(p)
    print("ok" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

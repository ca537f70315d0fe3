"""docs/config.md, the configuration reference, written from the config's own fields.

Each key's type, default and allowed values come from its field (foundation/config.py)
and its meaning from the docstring under it, read from the source (Python keeps no
attribute docstrings at run time). tests/unit/test_config.py fails when docs/config.md
differs from what this writes, so the reference cannot go stale:

    python -m foundation.config_reference        # rewrite docs/config.md
    python -m foundation.config_reference --check
"""

from __future__ import annotations

import ast
import sys
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any

from foundation import config
from foundation.fields import toml_value

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"
HEADER = """# Configuration reference

Every key of a run config (TOML, or `--set section.key=value`), with its type, default
and allowed values. Written by `python -m foundation.config_reference` from the fields
in `foundation/config.py` and their docstrings; a test fails when this page is stale.
"""


def docstrings() -> dict[tuple[str, str], str]:
    """(class name, field name) → the docstring under that field in foundation/config.py."""
    tree = ast.parse(Path(config.__file__).read_text())
    found: dict[tuple[str, str], str] = {}
    for cls in (node for node in tree.body if isinstance(node, ast.ClassDef)):
        for field_node, after in zip(cls.body, cls.body[1:], strict=False):
            if (isinstance(field_node, ast.AnnAssign) and isinstance(field_node.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):  # fmt: skip
                text = " ".join(after.value.value.split())
                found[(cls.name, field_node.target.id)] = text
    return found


def allowed(f: Field[Any]) -> str:
    meta = f.metadata
    if meta.get("choices"):
        return ", ".join(f"`{c}`" for c in meta["choices"])
    if meta.get("builtins"):
        return ", ".join(f"`{b}`" for b in meta["builtins"]) + ", or `pkg.module:name`"
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is None and hi is None:
        return ""
    low = "" if lo is None else f"{lo:g} {'<' if meta.get('open_lo') else '≤'} "
    return f"{low}x" + ("" if hi is None else f" ≤ {hi:g}")


def default_of(f: Field[Any]) -> str:
    factory: Any = f.default_factory
    value = f.default if f.default is not MISSING else factory()
    return f"`{toml_value(value)}`"


def render() -> str:
    texts = docstrings()
    parts = [HEADER]
    for section in fields(config.Config):
        cls = type(getattr(config.Config(), section.name))
        parts.append(f"\n## [{section.name}]\n\n| key | type | default | allowed | meaning |\n")
        parts.append("|---|---|---|---|---|\n")
        for f in fields(cls):
            meaning = texts.get((cls.__name__, f.name), "")
            meaning = meaning.replace("|", "\\|").replace("<", "\\<")  # not a table, no tag
            parts.append(
                f"| `{section.name}.{f.name}` | `{f.type}` | {default_of(f)} | {allowed(f)} "
                f"| {meaning} |\n"
            )
    return "".join(parts)


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        stale = not DOC.exists() or DOC.read_text() != text
        if stale:
            print(f"{DOC} is stale: run python -m foundation.config_reference", file=sys.stderr)
        return 1 if stale else 0
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

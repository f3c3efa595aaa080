"""The method registry is one-way: `merge.registry` imports the method modules, and no module under
`merge/methods` imports `merge.registry`, directly or through another `merge` module (read from
the sources' import statements, so the cycle cannot come back unnoticed)."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import merge
from merge import registry
from merge.methods.base import Method

PACKAGE = Path(merge.__file__).parent
METHOD_MODULES = sorted(p for p in (PACKAGE / "methods").glob("*.py") if p.name != "__init__.py")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(name: str) -> bool:
    return (PACKAGE.parent / Path(*name.split(".")) / "__init__.py").is_file()


def merge_imports(path: Path) -> set[str]:
    """The `merge` modules that the file at `path` imports anywhere (top level or inside functions)."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.add(base)
            # `from merge import registry` / `from .. import registry` import a module by name
            found |= {f"{base}.{a.name}" for a in node.names if is_package(base)}
    return {n for n in found if n == "merge" or n.startswith("merge.")}


def source_of(name: str) -> Path | None:
    p = PACKAGE.parent / Path(*name.split("."))
    return p / "__init__.py" if p.is_dir() else p.with_suffix(".py") if p.with_suffix(".py").is_file() else None


def import_chain(start: Path, target: str) -> list[str] | None:
    """A chain of `merge` imports from `start` to `target` (ignoring package __init__ files on the
    way, which Python runs for any submodule import), or None."""
    seen, todo = set(), [[module_name(start)]]
    while todo:
        chain = todo.pop()
        path = source_of(chain[-1])
        if path is None or chain[-1] in seen:
            continue
        seen.add(chain[-1])
        for name in sorted(merge_imports(path)):
            if name == target:
                return chain + [name]
            if name != "merge":
                todo.append(chain + [name])
    return None


def test_import_reader_sees_the_imports():
    """The reader itself: it finds the relative, absolute and from-package spellings of an import."""
    assert "merge.registry" in merge_imports(PACKAGE / "state_dict.py")
    assert {"merge.methods.base", "merge.methods.slerp", "merge.errors"} <= merge_imports(PACKAGE / "registry.py")
    assert "merge.checks" in merge_imports(PACKAGE / "methods" / "slerp.py")


@pytest.mark.parametrize("path", METHOD_MODULES, ids=[p.stem for p in METHOD_MODULES])
def test_method_modules_never_import_the_registry(path):
    chain = import_chain(path, "merge.registry")
    assert chain is None, f"{path.relative_to(PACKAGE.parent)} imports merge.registry: {' -> '.join(chain)}"


def test_registry_lists_every_method_constant_once_under_its_name():
    consts = {}
    for path in METHOD_MODULES:
        mod = importlib.import_module(module_name(path))
        consts.update({f"{mod.__name__}.{k}": v for k, v in vars(mod).items() if isinstance(v, Method)})
    assert consts, "no Method constants found under merge/methods"
    for where, m in consts.items():
        assert registry.REGISTRY.get(m.name) is m, f"{where} ({m.name!r}) is not in REGISTRY"
    shipped = {k: m for k, m in registry.REGISTRY.items() if m in consts.values()}
    assert all(k == m.name for k, m in shipped.items())
    assert len(shipped) == len(consts)   # no constant listed twice under two names


def test_register_adds_a_users_method_and_refuses_a_second_of_the_same_name(monkeypatch):
    monkeypatch.setattr(registry, "REGISTRY", dict(registry.REGISTRY))
    mine = Method("mine", registry.REGISTRY["liti"].params, uses_init=True, min_models=1, max_models=1,
                  apply=registry.REGISTRY["liti"].apply, summary="a user's method")
    assert registry.register(mine) is mine and registry.get_method("mine") is mine
    with pytest.raises(ValueError, match="'mine' registered twice"):
        registry.register(mine)
    assert merge.registry.Method is Method   # the public name users import still works

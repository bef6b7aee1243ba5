"""Every public name (a module's ``__all__``, defined in that module) has a runnable example in its docstring.

The examples themselves run as doctests (``--doctest-modules`` in the default test run); this test only keeps a new
public class or function from arriving without one. Packages are listed explicitly so the list can grow package by
package.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import densattn

PACKAGES = (
    "densattn.adapters",
    "densattn.analysis",
    "densattn.concentration",
    "densattn.data",
    "densattn.distributed",
    "densattn.encoders",
    "densattn.io",
    "densattn.pipeline",
    "densattn.train",
)


def _modules(prefixes: tuple[str, ...]) -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(densattn.__path__, "densattn.")]
    return sorted(n for n in names if n in prefixes or n.startswith(tuple(p + "." for p in prefixes)))


def missing_examples(module_names: list[str]) -> list[str]:
    """``module.name`` of every public name defined in one of ``module_names`` whose docstring has no example."""
    missing = []
    for module_name in module_names:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name, None)
            if obj is None or getattr(obj, "__module__", None) != module_name:
                continue  # a constant, or a re-export checked where it is defined
            doc = inspect.getdoc(obj) or ""
            if "Example" not in doc and ">>>" not in doc:
                missing.append(f"{module_name}.{name}")
    return missing


def test_finds_a_name_without_example(tmp_path, monkeypatch):
    package = tmp_path / "densattn_fake_pkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        '__all__ = ["documented", "bare"]\n\n'
        'def documented():\n    """Doc.\n\n    Example:\n        >>> documented()\n    """\n\n\n'
        'def bare():\n    """No example here."""\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert missing_examples(["densattn_fake_pkg"]) == ["densattn_fake_pkg.bare"]


@pytest.mark.filterwarnings("ignore")
def test_every_public_name_has_an_example():
    modules = _modules(PACKAGES)
    assert "densattn.train.loop" in modules and "densattn.io" in modules
    missing = missing_examples(modules)
    assert not missing, f"public names without an `Example:` section: {missing}"

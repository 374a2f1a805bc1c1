"""The fake server is an independent oracle: it imports nothing from the client half.

If :mod:`trio_sendmail.testing` shared parsing or encoding code with the client, a bug there
would be agreed with instead of caught. So every module of the package may import the standard
library, third-party packages and its own modules, but nothing else of ``trio_sendmail``. The
check reads the source, so it also sees imports under ``TYPE_CHECKING`` and inside functions.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

import trio_sendmail.testing

PACKAGE = "trio_sendmail.testing"
PACKAGE_DIR = Path(trio_sendmail.testing.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((PACKAGE, *parts))


def _package_of(module: str, path: Path) -> str:
    """The package that a relative import in *module* (at *path*) is relative to."""
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def imported_modules(source: str, module: str, package: str) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) for every import in *source*, relative ones resolved.

    ``from M import a, b`` yields M, M.a and M.b: a name may be a submodule.
    """
    for node in ast.walk(ast.parse(source, filename=module)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            relative = "." * node.level + (node.module or "")
            base = importlib.util.resolve_name(relative, package) if node.level else relative
            yield node.lineno, base
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{base}.{alias.name}"
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name | ast.Attribute)
            and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr)
            in ("__import__", "import_module")
        ):
            yield node.lineno, "<dynamic import>"


def client_imports(source: str, module: str, package: str) -> list[str]:
    """The imports in *source* that reach outside the testing package into trio_sendmail."""
    found = []
    for line, name in imported_modules(source, module, package):
        inside_testing = name == PACKAGE or name.startswith(PACKAGE + ".")
        in_trio_sendmail = name == "trio_sendmail" or name.startswith("trio_sendmail.")
        if name == "<dynamic import>" or (in_trio_sendmail and not inside_testing):
            found.append(f"{module}:{line}: {name}")
    return found


def package_modules() -> list[Path]:
    return sorted(PACKAGE_DIR.rglob("*.py"))


def test_the_package_is_split_into_modules() -> None:
    names = {_module_name(path) for path in package_modules()}
    assert {
        PACKAGE,
        f"{PACKAGE}._server",
        f"{PACKAGE}._dialogue",
        f"{PACKAGE}._sasl",
        f"{PACKAGE}._certificates",
    } <= names


@pytest.mark.parametrize("path", package_modules(), ids=lambda path: path.name)
def test_module_imports_nothing_from_the_client(path: Path) -> None:
    module = _module_name(path)
    source = path.read_text(encoding="utf-8")
    assert client_imports(source, module, _package_of(module, path)) == []


@pytest.mark.parametrize(
    "source",
    [
        "from .._core import Session",
        "from .. import _core",
        "import trio_sendmail._reply",
        "import trio_sendmail",
        "from trio_sendmail import errors",
        "def f():\n    from trio_sendmail._sasl import scram\n",
        "if TYPE_CHECKING:\n    from .._session import Session\n",
        "import importlib\nimportlib.import_module('trio_sendmail._core')",
    ],
)
def test_the_check_catches_client_imports(source: str) -> None:
    assert client_imports(source, f"{PACKAGE}._example", PACKAGE) != []


@pytest.mark.parametrize(
    "source",
    [
        "from ._server import FakeSMTPServer",
        "from . import _mail",
        "from trio_sendmail.testing._sasl import b64decode",
        "import trio_sendmail.testing",
        "import ssl, hmac\nimport trio\nfrom attrs import frozen",
    ],
)
def test_the_check_allows_its_own_and_outside_imports(source: str) -> None:
    assert client_imports(source, f"{PACKAGE}._example", PACKAGE) == []

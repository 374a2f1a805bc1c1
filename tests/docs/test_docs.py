"""The documentation's examples run, and the documentation builds.

Every ``.. code-block:: python`` in ``docs/*.rst`` is a complete program. Each one
is executed here against fake servers, so that no example can go stale:

* A :class:`~trio_sendmail.testing.FakeSMTPServer` is served on loopback for
  every (host name, port) that the examples use (:data:`ENDPOINTS`), with the
  extensions, SASL mechanisms and credentials of :func:`make_servers`. The
  examples keep their real-looking host names: ``trio.open_tcp_stream`` is
  patched to route those names to the fake servers (loopback addresses pass
  through, any other destination fails the test), and ``SSL_CERT_FILE`` points
  the default :class:`ssl.SSLContext` at a throw-away CA whose certificate
  covers those names. The library itself is not patched.
* An example that ends with ``trio.run(main)`` is executed as it is, in a
  worker thread (so that it can start its own trio loop); an example that
  defines ``test_*`` coroutines (the testing how-to) gets each of them run.
  An example that defines coroutines but runs none of them is refused.
* An example that sends mail must have delivered at least one message to the
  fake servers (unless it brings its own ``FakeSMTPServer``), with no protocol
  violation recorded, and must not have tried to reach an unknown server.
* Examples may import what the ``test`` extra installs: the DKIM how-to signs
  with ``dkimpy`` (and a throw-away key made with ``cryptography``, which
  ``trustme`` brings), the templates how-to renders with Jinja2 (which Sphinx
  brings). trio_sendmail itself depends on none of them.

The docs are also built with ``-W`` (warnings are errors), and the links of the
built HTML are checked offline: every internal link must resolve (file and
anchor), and every external link must go to an allow-listed documentation host
(:data:`ALLOWED_HOSTS`). External links are not fetched, because CI has no
network access. The build needs ``bench/RESULTS.md`` and ``bench/results.png``
(written by ``nox -s bench``), which the benchmarks page includes.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import logging
import re
import subprocess
import sys
import textwrap
import types
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import pytest
import trio

import trio_sendmail._settings as session_module
from trio_sendmail.testing import (
    FakeSMTPServer,
    TestCertificates,
    make_test_certificates,
    serve_fake_smtp,
)

from ..proxies_plugin import FakeProxy
from ..proxies_plugin import serve as serve_proxy

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

#: The hosts that external links of the docs may point to.
ALLOWED_HOSTS = (
    "rfc-editor.org",
    "datatracker.ietf.org",
    "docs.python.org",
    "trio.readthedocs.io",
    "www.postfix.org",
)

# ------------------------------------------------------------------ extraction


@attrs.frozen
class CodeBlock:
    """One code block of the docs: its language, where it is, and its text."""

    path: Path
    line: int  # the line of the block's first line of code
    language: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.path.name}:{self.line}"


_DIRECTIVE_RE = re.compile(
    r"^(?P<indent> *)\.\. (?:code-block|code|sourcecode)::[ \t]*(?P<lang>\S*)"
)
_LITERAL_RE = re.compile(r"::[ \t]*$")
_EXPLICIT_MARKUP_RE = re.compile(r"^ *\.\. ")
_PYTHON_ALIASES = {"python", "python3", "py", "py3", "pycon", "ipython", "ipython3", "default", ""}


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _block_after(lines: list[str], start: int, base_indent: int) -> tuple[int, str] | None:
    """The indented block that follows line *start* (options skipped), or None."""
    index = start + 1
    # Directive options (":language: ...") right after the directive line.
    while index < len(lines) and lines[index].strip().startswith(":") and lines[index].strip():
        index += 1
    while index < len(lines) and not lines[index].strip():
        index += 1
    first = index
    while index < len(lines) and (not lines[index].strip() or _indent(lines[index]) > base_indent):
        index += 1
    body = lines[first:index]
    if not body or _indent(body[0]) <= base_indent:
        return None
    return first + 1, textwrap.dedent("\n".join(body)).strip("\n") + "\n"


def extract_code_blocks(path: Path) -> list[CodeBlock]:
    """Every ``code-block`` (or ``code``, ``sourcecode``) directive of *path*."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    for number, line in enumerate(lines):
        match = _DIRECTIVE_RE.match(line)
        if match is None:
            continue
        found = _block_after(lines, number, len(match["indent"]))
        if found is not None:
            blocks.append(CodeBlock(path, found[0], match["lang"], found[1]))
    return blocks


def extract_literal_blocks(path: Path) -> list[CodeBlock]:
    """Every ``::`` literal block of *path* (not directive content)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    for number, line in enumerate(lines):
        if not _LITERAL_RE.search(line) or _EXPLICIT_MARKUP_RE.match(line):
            continue
        found = _block_after(lines, number, _indent(line))
        if found is not None:
            blocks.append(CodeBlock(path, found[0], "", found[1]))
    return blocks


def _doc_pages() -> list[Path]:
    return sorted(DOCS.glob("*.rst"))


EXAMPLES = [
    block
    for page in _doc_pages()
    for block in extract_code_blocks(page)
    if block.language == "python"
]


# ------------------------------------------------------------ fake servers

#: The credentials that the examples use, per server.
GMAIL_USERS = {"me@gmail.com": "abcd efgh ijkl mnop"}
GMAIL_TOKENS = {"ya29.stand-in-access-token": "me@gmail.com"}
OFFICE_TOKENS = {"eyJ0eXAiOiJKV1Qi.stand-in.token": "alerts@example.com"}
EXAMPLE_USERS = {
    "me@example.com": "app password",
    "reports@example.com": "app password",
    "news@example.com": "newsletter password",
}
RELAY_USERS = {"app": "relay password"}

#: (host name, port) as the examples give them -> (server, implicit TLS).
ENDPOINTS: dict[tuple[str, int], tuple[str, bool]] = {
    ("smtp.gmail.com", 465): ("gmail", True),
    ("smtp.gmail.com", 587): ("gmail", False),
    ("smtp.office365.com", 587): ("office365", False),
    ("smtp.example.com", 465): ("example", True),
    ("smtp.example.com", 587): ("example", False),
    ("localhost", 25): ("relay", False),
    ("127.0.0.1", 25): ("relay", False),
    ("lmtp.example.com", 24): ("lmtp", False),
}
#: (host name, port) of the proxies in docs/howto-proxy.rst -> their kind.
PROXY_ENDPOINTS = {("proxy.example.com", 1080): "socks5", ("proxy.example.com", 3128): "http"}
PROXY_CREDENTIALS = ("me", "proxy password")
CERTIFICATE_NAMES = sorted({host for host, _ in ENDPOINTS} | {"::1"})
LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def make_servers(certs: TestCertificates) -> dict[str, FakeSMTPServer]:
    """Fake servers shaped like the real ones the examples name."""
    return {
        "gmail": FakeSMTPServer(
            hostname="smtp.gmail.com",
            ssl_context=certs.server_context,
            extensions=(
                "SIZE 35882577",
                "8BITMIME",
                "ENHANCEDSTATUSCODES",
                "PIPELINING",
                "CHUNKING",
                "SMTPUTF8",
            ),
            auth_mechanisms=("LOGIN", "PLAIN", "XOAUTH2", "PLAIN-CLIENTTOKEN", "OAUTHBEARER"),
            users=GMAIL_USERS,
            tokens=GMAIL_TOKENS,
            require_auth=True,
        ),
        "office365": FakeSMTPServer(
            hostname="smtp.office365.com",
            ssl_context=certs.server_context,
            extensions=(
                "SIZE 157286400",
                "PIPELINING",
                "DSN",
                "ENHANCEDSTATUSCODES",
                "8BITMIME",
                "BINARYMIME",
                "CHUNKING",
                "SMTPUTF8",
            ),
            auth_mechanisms=("LOGIN", "XOAUTH2"),
            tokens=OFFICE_TOKENS,
            require_auth=True,
        ),
        "example": FakeSMTPServer(
            hostname="smtp.example.com",
            ssl_context=certs.server_context,
            auth_mechanisms=("SCRAM-SHA-256", "PLAIN", "LOGIN"),
            users=EXAMPLE_USERS,
            require_auth=True,
            refuse_recipients={
                "nobody@example.com": (550, "5.1.1 <nobody@example.com>: User unknown")
            },
        ),
        "relay": FakeSMTPServer(
            hostname="app1.example.com",
            extensions=("PIPELINING", "SIZE 10240000", "ENHANCEDSTATUSCODES", "8BITMIME"),
            users=RELAY_USERS,
            auth_requires_tls=False,
        ),
        "lmtp": FakeSMTPServer(
            hostname="lmtp.example.com",
            lmtp=True,
            extensions=("PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME", "CHUNKING"),
            lmtp_replies={"carol@example.com": (552, "5.2.2 <carol@example.com> Mailbox is full")},
        ),
    }


@pytest.fixture(scope="session")
def doc_certs() -> TestCertificates:
    return make_test_certificates(*CERTIFICATE_NAMES)


@pytest.fixture(scope="session")
def doc_ca_file(doc_certs: TestCertificates, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("docs-ca") / "ca.pem"
    path.write_bytes(doc_certs.ca_pem)
    return path


@contextlib.contextmanager
def _logging_restored() -> Iterator[None]:
    """Undo what an example does to logging (basicConfig, levels, handlers)."""
    names = (None, "trio_sendmail", "trio_sendmail.transcript")
    loggers = [logging.getLogger(name) for name in names]
    saved = [(lg, lg.level, list(lg.handlers), lg.propagate) for lg in loggers]
    try:
        yield
    finally:
        for lg, level, handlers, propagate in saved:
            lg.setLevel(level)
            lg.handlers[:] = handlers
            lg.propagate = propagate


def _runs_trio(tree: ast.Module) -> bool:
    """True if a top-level statement (not a definition) calls ``trio.run``."""
    for statement in tree.body:
        if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        for node in ast.walk(statement):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "run"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "trio"
            ):
                return True
    return False


def execute_example(example: CodeBlock) -> None:
    """Run *example* as a module (in a worker thread: it may call trio.run)."""
    tree = ast.parse(example.code)
    tests = [
        node.name
        for node in tree.body
        if isinstance(node, ast.AsyncFunctionDef) and node.name.startswith("test_")
    ]
    defines_coroutines = any(isinstance(node, ast.AsyncFunctionDef) for node in tree.body)
    if defines_coroutines and not tests and not _runs_trio(tree):
        raise AssertionError(
            f"{example.id}: the example defines coroutines but never runs them; "
            "end it with trio.run(main)"
        )
    module = types.ModuleType(f"docs_example_{example.path.stem}_{example.line}")
    module.__file__ = str(example.path)
    # Pad so that tracebacks give the line numbers of the .rst file.
    code = compile("\n" * (example.line - 1) + example.code, str(example.path), "exec")
    sys.modules[module.__name__] = module
    try:
        exec(code, module.__dict__)  # noqa: S102 - the documentation's own examples
        for name in tests:
            function = getattr(module, name)
            assert inspect.iscoroutinefunction(function)
            trio.run(function)
    finally:
        del sys.modules[module.__name__]


_SENDS_RE = re.compile(r"\b(?:sendmail|sendmail_with_starttls|send_bulk)\(|\.send\(")


@pytest.mark.parametrize("example", EXAMPLES, ids=[example.id for example in EXAMPLES])
async def test_example_runs(
    example: CodeBlock,
    doc_certs: TestCertificates,
    doc_ca_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    servers = make_servers(doc_certs)
    ports: dict[tuple[str, int], int] = {}
    unknown: list[tuple[str, int]] = []
    original_open_tcp_stream = trio.open_tcp_stream

    async def open_tcp_stream(host: str | bytes, port: int, **kwargs: Any) -> trio.SocketStream:
        name = host.decode() if isinstance(host, bytes) else host
        key = (name.lower(), port)
        if key in ports:
            return await original_open_tcp_stream("127.0.0.1", ports[key], **kwargs)
        if name in LOOPBACK:  # the example's own servers (the testing how-to)
            return await original_open_tcp_stream(host, port, **kwargs)
        unknown.append(key)
        raise OSError(f"the docs test serves no SMTP server at {name}:{port}")

    async with contextlib.AsyncExitStack() as stack:
        for (host, port), (name, implicit_tls) in ENDPOINTS.items():
            ports[host, port] = await stack.enter_async_context(
                serve_fake_smtp(servers[name], implicit_tls=implicit_tls)
            )
        # The proxies of docs/howto-proxy.rst, tunnelling to those servers.
        for (host, port), kind in PROXY_ENDPOINTS.items():
            proxy = FakeProxy(kind, ports, credentials=PROXY_CREDENTIALS)
            ports[host, port] = await stack.enter_async_context(serve_proxy(proxy.handle))
        monkeypatch.setattr(trio, "open_tcp_stream", open_tcp_stream)
        # The default SSLContext trusts the fake servers' CA (and only it).
        monkeypatch.setenv("SSL_CERT_FILE", str(doc_ca_file))
        monkeypatch.setattr(session_module, "_shared_context", None)
        with _logging_restored(), trio.fail_after(60):
            await trio.to_thread.run_sync(execute_example, example, abandon_on_cancel=True)

    assert not unknown, f"{example.id} connected to servers the test does not serve: {unknown}"
    for name, fake in servers.items():
        assert fake.bare_line_endings == 0, name
        assert fake.undeclared_8bit == 0, name
        assert fake.pipelining_violations == 0, name
        assert fake.injected_plaintext == [], name
    if _SENDS_RE.search(example.code) and "FakeSMTPServer" not in example.code:
        delivered = sum(len(server.messages) for server in servers.values())
        assert delivered > 0, f"{example.id} sends mail, but no message arrived"


# ------------------------------------------------------------ conventions


def test_examples_are_found() -> None:
    pages = {example.path.name for example in EXAMPLES}
    for page in (
        "index.rst",
        "tutorial.rst",
        "usage.rst",
        "messages.rst",
        "howto.rst",
        "webapp.rst",
        "bulk.rst",
        "scaling.rst",
        "logging.rst",
    ):
        assert page in pages, f"no Python example found in {page}"
    assert len(EXAMPLES) >= 15


def test_python_code_is_marked_as_python() -> None:
    """Python code must be in ``code-block:: python`` blocks, or it would not run here."""
    for page in _doc_pages():
        for block in extract_code_blocks(page):
            assert block.language not in _PYTHON_ALIASES - {"python"}, (
                f"{block.id}: write '.. code-block:: python' (not {block.language!r}) "
                "so that the example is executed"
            )
        for block in extract_literal_blocks(page):
            try:
                compile(block.code, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            except SyntaxError:
                continue
            assert not re.search(r"\b(?:import|await|async|trio)\b", block.code), (
                f"{block.id}: this '::' literal block looks like Python; make it a "
                "'.. code-block:: python' so that it is executed"
            )


def test_extraction() -> None:
    sample = [
        "Text::",
        "",
        "   literal",
        "",
        ".. code-block:: python",
        "   :caption: x",
        "",
        "   import trio",
        "",
        "   trio.run(main)",
        "",
        "After.",
    ]
    assert _block_after(sample, 4, 0) == (8, "import trio\n\ntrio.run(main)\n")
    assert _block_after(sample, 0, 0) == (3, "literal\n")
    assert _block_after(["x::", "", "not indented"], 0, 0) is None
    assert CodeBlock(DOCS / "sample.rst", 8, "python", "").id == "sample.rst:8"


# ------------------------------------------------------------ the build


@attrs.frozen
class Build:
    returncode: int
    output: str
    html: Path


@pytest.fixture(scope="module")
def built_docs(tmp_path_factory: pytest.TempPathFactory) -> Build:
    folder = tmp_path_factory.mktemp("docs-build")
    html = folder / "html"
    command = [
        sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
        "-d", str(folder / "doctrees"), str(DOCS), str(html),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    return Build(done.returncode, done.stdout + done.stderr, html)


def test_docs_build_without_warnings(built_docs: Build) -> None:
    missing = [
        name for name in ("RESULTS.md", "results.png") if not (ROOT / "bench" / name).exists()
    ]
    hint = f" (bench/{' and bench/'.join(missing)} missing: run nox -s bench)" if missing else ""
    assert built_docs.returncode == 0, f"sphinx-build -W failed{hint}:\n{built_docs.output}"


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.python_blocks = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {key: value for key, value in attrs if value is not None}
        if "id" in values:
            self.ids.add(values["id"])
        if tag == "a" and "name" in values:
            self.ids.add(values["name"])
        if tag in ("a", "link") and "href" in values:
            self.links.append(values["href"])
        if tag in ("img", "script") and "src" in values:
            self.links.append(values["src"])
        if tag == "div" and "highlight-python" in values.get("class", "").split():
            self.python_blocks += 1


def _parse_site(html: Path) -> dict[Path, _PageParser]:
    pages = {}
    for path in sorted(html.rglob("*.html")):
        parser = _PageParser()
        parser.feed(path.read_text(encoding="utf-8"))
        pages[path.resolve()] = parser
    return pages


def _allowed(host: str) -> bool:
    return any(host == allowed or host.endswith("." + allowed) for allowed in ALLOWED_HOSTS)


def check_links(html: Path) -> list[str]:
    """The problems with the links of the site in *html* (nothing is fetched)."""
    pages = _parse_site(html)
    problems = []
    for page, parser in pages.items():
        where = page.relative_to(html.resolve())
        for link in parser.links:
            parts = urlsplit(link)
            if parts.scheme in ("http", "https"):
                if not _allowed((parts.hostname or "").lower()):
                    problems.append(f"{where}: external link to a host not allowed: {link}")
                continue
            if parts.scheme or parts.netloc:
                problems.append(f"{where}: unexpected link {link}")
                continue
            target = (page.parent / parts.path).resolve() if parts.path else page
            if not target.exists():
                problems.append(f"{where}: broken link {link}")
            elif (
                parts.fragment
                and target.suffix == ".html"
                and parts.fragment not in pages[target].ids
            ):
                problems.append(f"{where}: no anchor #{parts.fragment} in {link}")
    return problems


def test_link_checker(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.html").write_text(
        '<p id="top"><a href="#top">ok</a> <a href="sub/b.html#there">ok</a>'
        '<a href="https://docs.python.org/3/">ok</a><img src="x.png">'
        '<a href="#nowhere">bad</a><a href="c.html">bad</a>'
        '<a href="https://example.com/">bad</a><a href="ftp://rfc-editor.org/">bad</a></p>'
    )
    (tmp_path / "sub" / "b.html").write_text(
        '<a name="there"></a><a href="../a.html#top">ok</a><a href="b.html#here">bad</a>'
    )
    (tmp_path / "x.png").write_bytes(b"")
    problems = check_links(tmp_path)
    assert len(problems) == 5, problems
    assert [p.split(": ")[0] for p in problems] == ["a.html"] * 4 + ["sub/b.html"]
    assert _allowed("www.rfc-editor.org") and not _allowed("evil-rfc-editor.org")


def test_links(built_docs: Build) -> None:
    """Internal links resolve; external ones go to allow-listed hosts (not fetched)."""
    if built_docs.returncode != 0:
        pytest.fail("the docs did not build (see test_docs_build_without_warnings)")
    problems = check_links(built_docs.html)
    assert not problems, "\n".join(problems)


def test_every_python_block_is_executed(built_docs: Build) -> None:
    """The built pages hold no more Python blocks than the examples run here."""
    if built_docs.returncode != 0:
        pytest.fail("the docs did not build (see test_docs_build_without_warnings)")
    pages = _parse_site(built_docs.html)
    for source in _doc_pages():
        if ".. auto" in source.read_text(encoding="utf-8"):
            continue  # docstrings have examples of their own
        page = (built_docs.html / source.with_suffix(".html").name).resolve()
        expected = sum(1 for example in EXAMPLES if example.path == source)
        assert pages[page].python_blocks == expected, source.name

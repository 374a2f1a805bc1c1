"""A Sphinx directive that renders the core's state table, so the docs cannot drift."""

from __future__ import annotations

from docutils import nodes
from docutils.parsers.rst import Directive
from docutils.statemachine import StringList
from sphinx.application import Sphinx


class StateTable(Directive):
    """``.. state-table::`` renders trio_sendmail._core.TABLE as a list-table."""

    def run(self) -> list[nodes.Node]:
        from trio_sendmail._core import TABLE

        lines = [
            ".. list-table::",
            "   :header-rows: 1",
            "",
            "   * - command",
            "     - legal in",
            "     - 2xx",
            "     - 3xx",
            "     - 4xx",
            "     - 5xx",
        ]
        for verb, rule in TABLE.items():
            legal = ", ".join(sorted(s.value for s in rule.legal))
            cells = []
            for klass in (2, 3, 4, 5):
                if klass not in rule.replies:
                    cells.append("protocol error")
                else:
                    nxt = rule.replies[klass]
                    cells.append("(same)" if nxt is None else nxt.value)
            lines.append(f"   * - ``{verb.value}``")
            lines.append(f"     - {legal}")
            lines.extend(f"     - {cell}" for cell in cells)
        node = nodes.section()
        self.state.nested_parse(StringList(lines), self.content_offset, node)
        return list(node.children)


def setup(app: Sphinx) -> dict[str, bool]:
    app.add_directive("state-table", StateTable)
    return {"parallel_read_safe": True}

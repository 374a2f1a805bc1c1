"""A Sphinx directive that renders the core's state table, so the docs cannot drift."""

from __future__ import annotations

from docutils import nodes
from docutils.parsers.rst import Directive
from docutils.statemachine import StringList
from sphinx.application import Sphinx


class StateTable(Directive):
    """``.. state-table::`` renders trio_sendmail._table.TABLE as a list-table."""

    def run(self) -> list[nodes.Node]:
        from trio_sendmail._table import TABLE

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


def _diagram_svg() -> str:
    """An SVG of the state machine: states on a circle, one arrow per (state,
    next state) pair, labelled with the commands and reply classes that take it."""
    import html
    import math

    from trio_sendmail._table import TABLE, State

    states = list(State)
    edges: dict[tuple[State, State], list[str]] = {}
    for verb, rule in TABLE.items():
        for klass, target in rule.replies.items():
            for source in rule.legal:
                nxt = source if target is None else target
                if nxt is not source:
                    edges.setdefault((source, nxt), []).append(f"{verb.value} {klass}xx")
    width, height, radius = 900, 700, 270
    cx, cy = width / 2, height / 2
    position = {
        state: (cx + radius * math.cos(2 * math.pi * i / len(states) - math.pi / 2),
                cy + radius * math.sin(2 * math.pi * i / len(states) - math.pi / 2))
        for i, state in enumerate(states)
    }  # fmt: skip
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        'font-family="sans-serif" font-size="10" role="img" '
        'aria-label="SMTP client state diagram">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" '
        'markerHeight="6" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z"/>'
        "</marker></defs>",
    ]
    for (source, target), labels in sorted(edges.items(), key=lambda e: str(e[0])):
        (x1, y1), (x2, y2) = position[source], position[target]
        dx, dy = x2 - x1, y2 - y1
        length = math.hypot(dx, dy) or 1
        # Curve each arrow to the right of its direction, so A→B and B→A part.
        mx, my = (x1 + x2) / 2 - dy / length * 30, (y1 + y2) / 2 + dx / length * 30
        sx, sy = x1 + dx / length * 40, y1 + dy / length * 40
        ex, ey = x2 - dx / length * 40, y2 - dy / length * 40
        title = html.escape(f"{source.value} → {target.value}: " + ", ".join(labels))
        parts.append(
            f'<path d="M {sx:.0f} {sy:.0f} Q {mx:.0f} {my:.0f} {ex:.0f} {ey:.0f}" fill="none" '
            f'stroke="#557" marker-end="url(#arrow)"><title>{title}</title></path>'
        )
        label = html.escape(", ".join(sorted({lab.split()[0] for lab in labels})))
        parts.append(f'<text x="{mx:.0f}" y="{my:.0f}" fill="#335">{label}</text>')
    for state, (x, y) in position.items():
        parts.append(
            f'<ellipse cx="{x:.0f}" cy="{y:.0f}" rx="44" ry="18" fill="#eef" stroke="#224"/>'
            f'<text x="{x:.0f}" y="{y + 4:.0f}" text-anchor="middle" font-size="12">'
            f"{html.escape(state.value)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


class StateDiagram(Directive):
    """``.. state-diagram::`` draws trio_sendmail._table.TABLE as an SVG."""

    def run(self) -> list[nodes.Node]:
        return [nodes.raw("", _diagram_svg(), format="html")]


def setup(app: Sphinx) -> dict[str, bool]:
    app.add_directive("state-table", StateTable)
    app.add_directive("state-diagram", StateDiagram)
    return {"parallel_read_safe": True}

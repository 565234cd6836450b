"""Draw a configuration as a graph: Mermaid flowcharts and Graphviz dot.

Nodes are triggers (fired by the application) and trigger tasks. Edges point
from a trigger to the task waiting for it, one style per kind:

- ``after``: the task needs the trigger;
- ``andEvery``: the task runs once per firing of the trigger;
- ``unless``: the trigger abandons the task's unstarted instances;
- ``cascade``: the source is itself a trigger task, whose success fires its name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from triggers.types import TaskConfig

__all__ = ["Edge", "EDGE_KINDS", "configuration_edges", "to_mermaid", "to_dot"]

EDGE_KINDS = ("after", "andEvery", "unless", "cascade")


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    kind: str  # one of EDGE_KINDS


def configuration_edges(tasks: Mapping[str, TaskConfig]) -> list[Edge]:
    """Every edge of the configuration, sorted by target task then source."""
    edges: list[Edge] = []
    for name in sorted(tasks):
        config = tasks[name]
        for trigger in sorted(config.after - ({config.and_every} if config.and_every else set())):
            edges.append(Edge(trigger, name, "cascade" if trigger in tasks else "after"))
        if config.and_every:
            edges.append(Edge(config.and_every, name, "andEvery"))
        for trigger in sorted(config.unless):
            edges.append(Edge(trigger, name, "unless"))
    return edges


def _nodes(tasks: Mapping[str, TaskConfig], edges: list[Edge]) -> list[str]:
    """Triggers first (in order of appearance), then tasks (sorted)."""
    seen: dict[str, None] = {}
    for edge in edges:
        if edge.source not in tasks:
            seen.setdefault(edge.source)
    return list(seen) + sorted(tasks)


def _mermaid_text(text: str) -> str:
    return (
        text.replace("&", "#amp;")
        .replace('"', "#quot;")
        .replace("<", "#lt;")
        .replace(">", "#gt;")
    )


_MERMAID_ARROWS = {
    "after": "-->|after|",
    "andEvery": "==>|andEvery|",
    "unless": "-.->|unless|",
    "cascade": "-->|cascade|",
}


def to_mermaid(tasks: Mapping[str, TaskConfig]) -> str:
    """A Mermaid flowchart (``flowchart LR``) of the configuration."""
    edges = configuration_edges(tasks)
    nodes = _nodes(tasks, edges)
    ids = {name: f"n{i}" for i, name in enumerate(nodes)}
    lines = ["flowchart LR"]
    for name in nodes:
        if name in tasks:
            label = f"{_mermaid_text(name)}<br/><small>{_mermaid_text(tasks[name].run)}</small>"
            lines.append(f'    {ids[name]}["{label}"]:::task')
        else:
            lines.append(f'    {ids[name]}(["{_mermaid_text(name)}"]):::trigger')
    for edge in edges:
        lines.append(f"    {ids[edge.source]} {_MERMAID_ARROWS[edge.kind]} {ids[edge.target]}")
    lines.append("    classDef trigger fill:#fff7e6,stroke:#d48806,color:#000")
    lines.append("    classDef task fill:#e6f4ff,stroke:#1677ff,color:#000")
    styles = {
        "andEvery": "stroke:#1677ff,stroke-width:3px",
        "unless": "stroke:#cf1322,stroke-dasharray:4 3",
        "cascade": "stroke:#389e0d,stroke-width:2px",
    }
    for kind, style in styles.items():
        indexes = [str(i) for i, edge in enumerate(edges) if edge.kind == kind]
        if indexes:
            lines.append(f"    linkStyle {','.join(indexes)} {style}")
    return "\n".join(lines) + "\n"


def _dot_text(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


_DOT_EDGE_ATTRS = {
    "after": 'label="after"',
    "andEvery": 'label="andEvery", style=bold, penwidth=2.5, color="#1677ff"',
    "unless": 'label="unless", style=dashed, color="#cf1322", arrowhead=tee',
    "cascade": 'label="cascade", penwidth=2, color="#389e0d"',
}


def to_dot(tasks: Mapping[str, TaskConfig]) -> str:
    """A Graphviz ``digraph`` of the configuration."""
    edges = configuration_edges(tasks)
    lines = [
        "digraph triggers {",
        "    rankdir=LR;",
        '    node [fontname="Helvetica"];',
        '    edge [fontname="Helvetica", fontsize=10];',
    ]
    for name in _nodes(tasks, edges):
        if name in tasks:
            label = _dot_text(f"{name}\n{tasks[name].run}")
            lines.append(
                f"    {_dot_text(name)} [shape=box, style=\"rounded,filled\", "
                f'fillcolor="#e6f4ff", label={label}];'
            )
        else:
            lines.append(
                f'    {_dot_text(name)} [shape=ellipse, style=filled, fillcolor="#fff7e6"];'
            )
    for edge in edges:
        lines.append(
            f"    {_dot_text(edge.source)} -> {_dot_text(edge.target)} "
            f"[{_DOT_EDGE_ATTRS[edge.kind]}];"
        )
    lines.append("}")
    return "\n".join(lines) + "\n"

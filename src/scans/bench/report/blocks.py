"""The report's building blocks: text formatting, :class:`Table`, :class:`Chart`, :class:`Section`,
and :class:`ReportBase`, the state every section builder shares."""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..judges import DEFAULT_JUDGE
from .run import RunData


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def md_cell(text: Any) -> str:
    return html.escape(" ".join(str(text).split()), quote=False).replace("|", "\\|")


def num(value: Any, fmt: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, fmt)


def pct(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}%"


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]

    def markdown(self) -> str:
        lines = ["| " + " | ".join(md_cell(h) for h in self.header) + " |"]
        lines.append("|" + "---|" * len(self.header))
        lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in self.rows]
        return "\n".join(lines)

    def html(self, css: str = "") -> str:
        head = "".join(f"<th>{esc(h)}</th>" for h in self.header)
        body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in self.rows)
        return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


@dataclass
class Chart:
    name: str
    title: str
    png: bytes


@dataclass
class Section:
    """A report section: ordered blocks, each a paragraph (str), a Table, a Chart or raw (md, html)."""

    title: str
    anchor: str
    blocks: list[Any] = field(default_factory=list)


class ReportBase:
    """A report in the making: the run, the judge, and the sections, charts and gaps found so far."""

    def __init__(self, run: RunData, judge: str = DEFAULT_JUDGE) -> None:
        self.run = run
        self.judge = judge
        self.missing: list[str] = list(run.notes)
        self.sections: list[Section] = []
        self.charts: list[Chart] = []

    def _chart(self, section: Section, name: str, title: str, draw: Callable[[], bytes]) -> None:
        try:
            png = draw()
        except Exception as exc:  # a chart must never sink the report
            section.blocks.append(f"Chart '{title}' could not be drawn: {' '.join(str(exc).split())}")
            self.missing.append(f"chart {name} failed: {type(exc).__name__}")
            return
        chart = Chart(name, title, png)
        self.charts.append(chart)
        section.blocks.append(chart)

"""``scans report RUN_DIR``: Markdown and self-contained HTML from a benchmark run directory.

A run directory (written by ``scans bench``) holds ``meta.json``, ``generations.jsonl`` and,
optionally, ``capability.json``, ``humaneval.jsonl`` (+ ``humaneval.json``), ``lens.json``,
``timings.json`` and ``profile/``. Partial runs
are fine: whatever is missing is listed in the report instead of failing. Charts are PNGs drawn
with matplotlib (Agg); the HTML inlines them as base64 (no external assets), the Markdown links
to copies under ``charts/``. Every chart's ``<img>`` has ``id="chart-<name>"`` and
``data-chart="<name>"``.

The pieces: ``run`` reads the run directory, ``blocks`` holds tables, charts, sections and text
formatting, ``charts`` draws with matplotlib, and the section builders live in ``refusals``,
``fit`` and ``capability``; :class:`Report` here runs them and renders Markdown and HTML.
"""

from __future__ import annotations

import base64
import datetime as _dt
import re
from collections.abc import Callable
from pathlib import Path

from ...errors import ScansError
from ..judges import DEFAULT_JUDGE
from .blocks import Chart, Section, Table, esc, md_cell
from .capability import CapabilitySections
from .fit import FitSections
from .refusals import RefusalSections
from .run import RunData, load_run, read_generations

__all__ = ["Chart", "Report", "RunData", "Section", "Table", "load_run", "read_generations", "write_report"]

_CODE = re.compile(r"`([^`]+)`")


class Report(RefusalSections, FitSections, CapabilitySections):
    """Builds the report sections from a :class:`RunData`."""

    def __init__(self, run: RunData, judge: str = DEFAULT_JUDGE) -> None:
        super().__init__(run, judge)
        builders: list[Callable[[], Section | None]] = [
            self._refusals,
            self._unlocked,
            self._jailbreak,
            self._xstest_labels,
            self._classifier,
            self._layers,
            self._capability,
            self._humaneval,
            self._agreement,
            self._settings,
            self._examples,
        ]
        for build in builders:
            try:
                section = build()
            except Exception as exc:  # malformed optional files must not sink the whole report
                name = build.__name__.strip("_")
                detail = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:200]
                section = Section(f"{name.replace('_', ' ').capitalize()} (failed)", f"failed-{name}")
                section.blocks.append(f"This section could not be built ({detail}).")
                self.missing.append(f"section {name} failed: {detail}")
            if section is not None:
                self.sections.append(section)

    # ------------------------------------------------------------------------- rendering
    def _missing_section(self) -> Section | None:
        if not self.missing:
            return None
        s = Section("Missing or incomplete", "missing")
        s.blocks.append(
            (
                "\n".join(f"- {md_cell(m)}" for m in dict.fromkeys(self.missing)),
                "<ul>" + "".join(f"<li>{esc(m)}</li>" for m in dict.fromkeys(self.missing)) + "</ul>",
            )
        )
        return s

    def _all_sections(self) -> list[Section]:
        missing = self._missing_section()
        return self.sections + ([missing] if missing else [])

    def _title(self) -> str:
        return f"SCANS benchmark report: {self.run.meta.get('model', 'unknown model')}"

    def markdown(self, chart_dir: str = "charts") -> str:
        out = [
            f"# {md_cell(self._title())}",
            "",
            f"Run directory: `{self.run.path}`; judge: `{self.judge}`.",
            "",
        ]
        for section in self._all_sections():
            out += [f"## {section.title}", ""]
            for block in section.blocks:
                if isinstance(block, Table):
                    out.append(block.markdown())
                elif isinstance(block, Chart):
                    out.append(f"![{block.title}]({chart_dir}/{block.name}.png)")
                elif isinstance(block, tuple):
                    out.append(block[0])
                else:
                    out.append(md_cell(block))
                out.append("")
        return "\n".join(out).rstrip() + "\n"

    def html(self) -> str:
        generated = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        nav = " · ".join(f'<a href="#{s.anchor}">{esc(s.title)}</a>' for s in self._all_sections())
        body = []
        for section in self._all_sections():
            body.append(f'<section id="{section.anchor}"><h2>{esc(section.title)}</h2>')
            for block in section.blocks:
                if isinstance(block, Table):
                    body.append(block.html())
                elif isinstance(block, Chart):
                    data = base64.b64encode(block.png).decode("ascii")
                    body.append(
                        f'<figure><img id="chart-{block.name}" data-chart="{block.name}" alt="{esc(block.title)}" '
                        f'src="data:image/png;base64,{data}"><figcaption>{esc(block.title)}</figcaption></figure>'
                    )
                elif isinstance(block, tuple):
                    body.append(block[1])
                else:
                    body.append("<p>" + _CODE.sub(r"<code>\1</code>", esc(block)) + "</p>")
            body.append("</section>")
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{esc(self._title())}</title><style>{_CSS}</style></head><body>"
            f"<h1>{esc(self._title())}</h1>"
            f'<p class="meta">Run directory <code>{esc(self.run.path)}</code>; judge <code>{esc(self.judge)}</code>; '
            f"generated {generated}.</p><nav>{nav}</nav>" + "".join(body) + "</body></html>\n"
        )


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1150px;color:#222;
background:#fff;line-height:1.4}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;margin:10px 0;font-size:0.9em}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}
figure{margin:12px 0}img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:0.85em;color:#555}
nav{font-size:0.9em;margin-bottom:16px}.meta{color:#555;font-size:0.9em}
table.examples td{max-width:320px}.resp{white-space:pre-wrap;font-size:0.85em;max-height:16em;overflow:auto}
td.refusal{background:#fdecea}td.compliance{background:#eaf6ec}
.badge{font-size:0.75em;font-weight:bold;text-transform:uppercase;color:#555}
td.prompt{max-width:260px}
"""


def write_report(
    run_dir: str | Path, out: str | Path | None = None, judge: str = DEFAULT_JUDGE
) -> tuple[Path, Path]:
    """Write ``report.md`` (+ ``charts/*.png``) and a self-contained ``report.html``; returns their paths."""
    from ..judges import get_judge

    get_judge(judge)  # unknown names fail before any work
    run = load_run(run_dir)
    report = Report(run, judge)
    target = Path(out) if out is not None else run.path
    try:
        target.mkdir(parents=True, exist_ok=True)
        charts = target / "charts"
        if report.charts:
            charts.mkdir(exist_ok=True)
        for chart in report.charts:
            (charts / f"{chart.name}.png").write_bytes(chart.png)
        md = target / "report.md"
        md.write_text(report.markdown(), encoding="utf-8")
        page = target / "report.html"
        page.write_text(report.html(), encoding="utf-8")
    except OSError as exc:
        raise ScansError(
            f"cannot write the report to {target}: {exc.strerror or exc}; fix: pass a writable --out DIR"
        ) from None
    return md, page

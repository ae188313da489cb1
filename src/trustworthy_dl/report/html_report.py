"""``tdl report DIR``: a self-contained HTML report (report.html) and its Markdown twin (report.md).

DIR is a finished run (summary.json) or a sweep (sweep.json). The figures are drawn with
matplotlib into ``DIR/report/``; report.html embeds them (base64 PNG, so the one file can be
mailed or attached) and report.md links to them. Templates: ``report/templates/*.j2`` (jinja2).
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

from trustworthy_dl.errors import TdlError
from trustworthy_dl.report.rundir import read_summary

__all__ = ["write_report"]


def _md_table(t: dict[str, Any]) -> str:
    esc = lambda v: str(v).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(c) for c in t["cols"]) + " |", "|" + "---|" * len(t["cols"])]
    lines += ["| " + " | ".join(esc(v) for v in r) + " |" for r in t["rows"]]
    return "\n".join(lines)


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_report(target: str | Path) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` into the run or sweep directory ``target``."""
    import jinja2

    d = Path(target)
    figs = d / "report"
    try:
        if (d / "sweep.json").is_file():
            from trustworthy_dl.report.sweep_page import sweep_sections

            figs.mkdir(exist_ok=True)
            sections = sweep_sections(d, figs)
            title, subtitle = f"trustworthy-dl sweep: {d.name}", f"{d.resolve()}"
        elif (d / "summary.json").is_file():
            from trustworthy_dl.report.run_page import run_sections

            summary = read_summary(d / "summary.json")
            figs.mkdir(exist_ok=True)
            sections = run_sections(d, summary, figs)
            name = (summary.get("run") or {}).get("name", d.name)
            title = f"trustworthy-dl run: {name}"
            subtitle = f"{summary.get('model')} on {summary.get('dataset')}, {summary.get('num_nodes')} nodes, {d.resolve()}"
        else:
            raise TdlError(
                f"{str(d)!r} holds neither summary.json (a finished run) nor sweep.json (a finished sweep)"
            )
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise TdlError(
            f"cannot build a report from {str(d)!r}: a result file is missing or damaged ({type(err).__name__}: {err})"
        ) from None
    for s in sections:
        for f in s.get("figures") or []:
            f["src"] = "data:image/png;base64," + base64.b64encode((d / f["file"]).read_bytes()).decode()
        if s.get("table"):
            s["md_table"] = _md_table(s["table"])
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("trustworthy_dl.report", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    ctx = {"title": title, "subtitle": subtitle, "sections": sections}
    html, md = d / "report.html", d / "report.md"
    _write(html, env.get_template("report.html.j2").render(**ctx))
    _write(md, env.get_template("report.md.j2").render(**ctx))
    return html, md

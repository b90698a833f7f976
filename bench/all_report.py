"""bench/all.py's rows and what it writes of them: the text and Markdown tables, the raw
figures of every repetition, the TSV, and the matplotlib plots (msgs/s against connections and
against message size, RSS against idle connections).
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import idle_rss as ir
import relay_load as rl
import smtp_lab as sx

KB, MB = 1024, 1024 * 1024
RSS_GOAL_MIB = 150e6 / MB  # 150 MB
say = rl.say
SWEEP_CONNS = (1, 20, 100, 500)
SWEEP_SIZES = (KB, 10 * KB, 100 * KB, MB, 10 * MB)

# ------------------------------------------------------------------------------- rows


@dataclass
class Run:
    rep: int
    system: str  # "ours" or "anchor"
    value: float | None
    load1: float | None
    note: str = ""


@dataclass
class Row:
    key: str
    title: str
    unit: str
    anchor: str  # the anchor's name, or why there is none
    goal: str = "-"
    check: Callable[[Row], bool | None] | None = None
    runs: list[Run] = field(default_factory=list)
    note: str = ""
    has_anchor: bool = True

    def values(self, system: str) -> list[float | None]:
        return [r.value for r in sorted(self.runs, key=lambda r: r.rep) if r.system == system]

    def median(self, system: str) -> float | None:
        xs = [x for x in self.values(system) if x is not None]
        return statistics.median(xs) if xs else None

    @property
    def ratio(self) -> float | None:
        a, b = self.median("ours"), self.median("anchor")
        return a / b if a is not None and b else None

    @property
    def load(self) -> float | None:
        xs = [r.load1 for r in self.runs if r.load1 is not None]
        return statistics.median(xs) if xs else None

    @property
    def met(self) -> bool | None:
        return self.check(self) if self.check else None


def ratio_at_least(x: float) -> Callable[[Row], bool | None]:
    def check(row: Row) -> bool | None:
        return None if row.ratio is None else row.ratio >= x

    return check


def load1_of(text: str | None) -> float | None:
    """The 1-minute figure of '0.85 0.90 0.69' (or of '0.85')."""
    try:
        return float(str(text).split()[0])
    except (ValueError, IndexError):
        return None


@dataclass
class State:
    """Everything measured so far, in the order of the table."""

    rows: dict[str, Row] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    config: list[str] = field(default_factory=list)
    smtp: sx.Results = field(default_factory=sx.Results)
    rss: list[ir.Level] = field(default_factory=list)
    interrupted: str = ""

    def row(self, key: str, title: str, unit: str, anchor: str, **kw: Any) -> Row:
        if key not in self.rows:
            self.rows[key] = Row(key, title, unit, anchor, **kw)
        return self.rows[key]


# ------------------------------------------------------------------------------ output


def human(size: int) -> str:
    return f"{size // MB} MB" if size >= MB else f"{size // KB} KB"


def fmt(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    if unit in ("MiB", "KiB/conn"):
        return f"{x:,.1f}"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.1f}"


def table_cells(row: Row) -> list[str]:
    a = row.median("anchor")
    anchor = f"{row.anchor}: {fmt(a, row.unit)}" if row.has_anchor else row.anchor
    met = row.met
    lo = [r.load1 for r in row.runs if r.load1 is not None]
    load = f"{row.load:.2f}" if row.load is not None else "-"
    if len(lo) > 1:
        load += f" ({min(lo):.2f}-{max(lo):.2f})"
    return [
        row.title,
        anchor,
        f"{fmt(row.median('ours'), row.unit)} {row.unit}",
        f"{row.ratio:.2f}x" if row.ratio is not None else "-",
        row.goal,
        "-" if met is None else "yes" if met else "NO",
        load,
    ]


HEAD = ["workload", "anchor (median)", "ours (median)", "ratio", "goal", "met?", "load avg"]


def text_table(rows: list[Row]) -> list[str]:
    cells = [HEAD] + [table_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEAD))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    for c in cells[1:]:
        lines.append(" | ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)))
    return lines


def md_table(rows: list[Row]) -> list[str]:
    out = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    for r in rows:
        out.append("| " + " | ".join(c.replace("|", "/") for c in table_cells(r)) + " |")
    return out


def raw_lines(rows: list[Row]) -> list[str]:
    out = []
    for r in rows:
        ours = [fmt(x, r.unit) for x in r.values("ours")]
        line = f"{r.key}: ours {ours}"
        if r.has_anchor:
            line += f", {r.anchor} {[fmt(x, r.unit) for x in r.values('anchor')]}"
        loads = [f"{x.load1:.2f}" for x in sorted(r.runs, key=lambda x: x.rep) if x.load1]
        if loads:
            line += f", load1 {loads}"
        notes = sorted({f"{x.system} rep {x.rep}: {x.note}" for x in r.runs if x.note})
        if r.note:
            line += f"; {r.note}"
        if notes:
            line += "; " + "; ".join(notes)
        out.append(line)
    return out


def write_tsv(path: Path, rows: list[Row], stamp: str) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["run", "workload", "title", "rep", "system", "value", "unit", "load1", "note"])
        for r in rows:
            for x in sorted(r.runs, key=lambda x: (x.rep, x.system)):
                system = "ours" if x.system == "ours" else r.anchor
                w.writerow(
                    [stamp, r.key, r.title, x.rep, system]
                    + ["" if x.value is None else f"{x.value:.3f}", r.unit]
                    + ["" if x.load1 is None else f"{x.load1:.2f}", x.note or r.note]
                )


def plots(st: State, out: Path, stamp: str, postfix: str) -> list[Path]:
    """The PNGs (as many as there are data for); [] without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("matplotlib missing (pip install -e '.[bench]'): no plots")
        return []
    made = []

    def series(system: str, xs: list[int], pick: Callable[[int], tuple[int, int]]):
        med, raw = [], []
        for x in xs:
            vals = [
                p.delivered
                for p in st.smtp.points
                if p.system == system and (p.size, p.conc) == pick(x) and p.delivered
            ]
            raw += [(x, v) for v in vals]
            med.append(statistics.median(vals) if vals else float("nan"))
        return med, raw

    def save(fig: Any, ax: Any, name: str, which: str = "major") -> None:
        ax.grid(True, which=which, alpha=0.3)
        ax.legend()
        path = out / f"all-{stamp}-{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)

    for name, xs, pick, xlabel, ticks in (
        ("connections", list(SWEEP_CONNS), lambda x: (KB, x), "connections (1 KB messages)", None),
        ("sizes", list(SWEEP_SIZES), lambda x: (x, 20), "message size (20 connections)", human),
    ):
        if not any(pick(x) == (p.size, p.conc) for x in xs for p in st.smtp.points):
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for system, label, color in (("ours", "mailappliance", "C0"), ("postfix", postfix, "C1")):
            med, raw = series(system, xs, pick)
            ax.plot(xs, med, marker="o", color=color, label=f"{label} (median)")
            if raw:
                ax.scatter(*zip(*raw, strict=True), color=color, alpha=0.3, s=12)
        ax.set_xscale("log")
        ax.set_xticks(xs)
        ax.set_xticklabels([ticks(x) if ticks else str(x) for x in xs])
        if name == "sizes":
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("msgs/s delivered into Maildir")
        ax.set_title(f"SMTP accept + delivery, lab config, smtp-source ({stamp})")
        save(fig, ax, name, "both")
    good = [x for x in st.rss if not x.error]
    if good:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        med = ir.medians(st.rss)
        ax.scatter([x.level for x in good], [x.rss_mib for x in good], alpha=0.3, s=12, color="C0")
        ax.plot(*zip(*med, strict=True), marker="o", color="C0", label="mailappliance (median)")
        lin = ir.linearity(st.rss)
        if lin:
            top = max(x.level for x in good)
            ax.plot(
                [0, top],
                [lin["base_mib"], lin["base_mib"] + lin["kib_per_conn"] * top / 1024],
                "--",
                color="C2",
                label=f"fit: {lin['kib_per_conn']:.1f} KiB/conn, R^2 {lin['r2']:.3f}",
            )
        ax.axhline(RSS_GOAL_MIB, color="C3", linestyle=":", label="goal: 150 MB at 1000")
        ax.set_ylim(bottom=0)
        ax.set_xlabel("idle connections (SMTP, POP3, IMAP round robin)")
        ax.set_ylabel("VmRSS, MiB")
        ax.set_title(f"Memory of idle connections, lab config ({stamp})")
        save(fig, ax, "rss")
    return made

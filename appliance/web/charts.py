"""Line charts as SVG, made on the server (the status page needs no JavaScript).

`line_chart` draws a few series of counts over equal time steps: one polyline each, a
horizontal grid with the scale's top value, the time span under the x axis and a legend.
Names and labels are escaped; the drawing has a <title> and an aria-label for screen readers.
"""

from __future__ import annotations

from collections.abc import Sequence
from xml.sax.saxutils import escape, quoteattr

# colours that stay apart for the common colour blindnesses (Okabe and Ito)
COLOURS = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000")
WIDTH, HEIGHT = 560, 200
LEFT, RIGHT, TOP, BOTTOM = 44, 10, 10, 50


def nice_top(value: int) -> int:
    """The smallest of 1, 2, 5 x 10^n at or over value (the y scale's top), at least 1."""
    top = 1
    while True:
        for factor in (1, 2, 5):
            if top * factor >= value:
                return top * factor
        top *= 10


def line_chart(
    title: str,
    series: Sequence[tuple[str, Sequence[int]]],
    start_label: str,
    end_label: str = "now",
) -> str:
    """An SVG element (as text) plotting each (name, values); every series has the same
    number of values, one per time step, the newest last."""
    steps = max((len(v) for _, v in series), default=0)
    top = nice_top(max((max(v, default=0) for _, v in series), default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label={quoteattr(title)}>',
        f"<title>{escape(title)}</title>",
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#fff" '
        'stroke="#999"/>',
    ]
    for fraction in (0.5, 1.0):
        y = TOP + plot_h * (1 - fraction)
        out.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" stroke="#ddd"/>'
        )
        out.append(
            f'<text x="{LEFT - 4}" y="{y + 4:.1f}" font-size="11" text-anchor="end">'
            f"{top * fraction:g}</text>"
        )
    out.append(
        f'<text x="{LEFT - 4}" y="{TOP + plot_h + 4}" font-size="11" text-anchor="end">0</text>'
    )
    for i, (name, values) in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        if values:
            dx = plot_w / max(steps - 1, 1)
            points = " ".join(
                f"{LEFT + dx * j:.1f},{TOP + plot_h * (1 - v / top):.1f}"
                for j, v in enumerate(values)
            )
            out.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{points}">'
                f"<title>{escape(name)}: {sum(values)} in all</title></polyline>"
            )
        x, y = LEFT + (i % 4) * 125, HEIGHT - 22 + (i // 4) * 14  # four names a row
        out.append(f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{colour}"/>')
        out.append(
            f'<text x="{x + 14}" y="{y}" font-size="11">{escape(name)} ({sum(values)})</text>'
        )
    baseline = TOP + plot_h + 14
    out.append(f'<text x="{LEFT}" y="{baseline}" font-size="11">{escape(start_label)}</text>')
    out.append(
        f'<text x="{LEFT + plot_w}" y="{baseline}" font-size="11" text-anchor="end">'
        f"{escape(end_label)}</text>"
    )
    out.append("</svg>")
    return "\n".join(out)

"""The runner report's picture: one row per VM, a bar while it was on, as a PNG (matplotlib, Agg).

Drawn on a bare ``Figure`` with the Agg canvas: no pyplot global state, so it is safe to call
from the bot's worker threads and needs no display.
"""

from __future__ import annotations

import io
from datetime import datetime, timezone, tzinfo
from typing import Sequence

from gitlab_hook.ledger import VmUsage

ON_COLOUR = "#2e9e5b"
OFF_COLOUR = "#e9ecef"


def timeline_png(usages: Sequence[VmUsage], start: float, end: float, tz: tzinfo = timezone.utc,
                 title: str | None = None) -> bytes:
    """PNG bytes of the on/off timeline of each VM over [start, end)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    rows = list(usages)
    height = 1.6 + 0.55 * max(1, len(rows))
    fig = Figure(figsize=(10, height), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)

    def num(epoch: float) -> float:
        return float(date2num(datetime.fromtimestamp(epoch, tz)))

    x0, x1 = num(start), num(end)
    for i, u in enumerate(rows):
        y = len(rows) - 1 - i
        ax.broken_barh([(x0, x1 - x0)], (y - 0.35, 0.7), facecolors=OFF_COLOUR)
        spans = [(num(a), num(b) - num(a)) for a, b in u.intervals if b > a]
        if spans:
            ax.broken_barh(spans, (y - 0.35, 0.7), facecolors=ON_COLOUR)
        ax.text(x1, y, f"  {u.hours_on:.1f} h on", va="center", ha="left", fontsize=9)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([u.vm for u in reversed(rows)])
    ax.set_ylim(-0.7, max(1, len(rows)) - 0.3)
    ax.set_xlim(x0, x1)
    locator = AutoDateLocator(tz=tz)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator, tz=tz))
    ax.grid(axis="x", color="#cccccc", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    if not rows:
        ax.text((x0 + x1) / 2, 0, "no power changes recorded", ha="center", va="center", color="#666666")
        ax.set_yticks([])
    days = (end - start) / 86400
    ax.set_title(title or f"Runner VMs on/off, last {days:g} day{'s' if days != 1 else ''} ({tz})", fontsize=11)
    ax.legend(handles=[Patch(color=ON_COLOUR, label="on"), Patch(color=OFF_COLOUR, label="off")],
              loc="upper left", bbox_to_anchor=(0, -0.12 if len(rows) > 1 else -0.25), ncol=2, frameon=False,
              fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()

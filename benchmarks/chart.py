# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
"""An SVG bar chart of registry_bench.py's results: seconds per operation and bytes stored, registry against the
dogestry paths. No plotting library: a few rectangles and labels.

    python3 benchmarks/chart.py README.md benchmarks/registry-bench.svg   # from the summary table already measured
    python3 benchmarks/registry_bench.py --repeat 3 --chart OUT.svg        # from a new run
"""

import re
import sys
from typing import Dict, List, Tuple
from xml.sax.saxutils import escape

# (table column heading starts with, short name, colour): the paths an operator chooses between
SERIES = (("registry", "registry", "#8c8c8c"), ("accelerator", "accelerator", "#4e79a7"),
          ("modules", "modules (engine)", "#59a14f"), ("CLI", "dogestry CLI", "#f28e2b"))
OPERATIONS = ("cold push", "no-op push", "one-layer update push", "cold pull", "no-op pull", "one-layer update pull")


def parse_table(markdown: str) -> Tuple[Dict[str, Dict[str, float]], Dict[str, float]]:
    """The first markdown table with a "cold push" row: ({operation: {series: seconds}}, {series: bytes stored})."""
    lines = markdown.splitlines()
    for start, line in enumerate(lines):
        if line.startswith("| cold push |"):
            break
    else:
        raise ValueError("no table with a 'cold push' row")
    head = start - 2
    columns = [cell.strip() for cell in lines[head].strip().strip("|").split("|")]
    index = {}
    for key, _label, _colour in SERIES:
        found = [i for i, name in enumerate(columns) if name.startswith(key)]
        if not found:
            raise ValueError("no column for %r in %r" % (key, columns))
        index[key] = found[0]
    seconds, stored = {}, {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        row = cells[0]
        for key, column in index.items():
            number = re.match(r"\**([0-9.]+) (s|MB)", cells[column])
            if number and row in OPERATIONS:
                seconds.setdefault(row, {})[key] = float(number.group(1))
            elif number and row.startswith("bytes stored"):
                stored[key] = float(number.group(1)) * 1e6
    return seconds, stored


def _bars(out: List[str], top: int, title: str, groups: List[Tuple[str, Dict[str, float]]], unit: str) -> int:
    """Horizontal grouped bars from y=top; returns the y below them."""
    label_w, plot_w, bar_h, gap = 190, 430, 11, 10
    peak = max((v for _name, values in groups for v in values.values()), default=1.0) or 1.0
    out.append('<text x="10" y="%d" font-weight="bold">%s</text>' % (top + 14, escape(title)))
    y = top + 26
    for name, values in groups:
        out.append('<text x="%d" y="%d" text-anchor="end">%s</text>' % (label_w - 8, y + 2 * bar_h, escape(name)))
        for key, _label, colour in SERIES:
            if key not in values:
                continue
            value = values[key]
            width = max(1.0, plot_w * value / peak)
            out.append('<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"/>' % (label_w, y, width, bar_h - 1, colour))
            text = ("%.3f s" % value if value < 0.1 else "%.2f s" % value) if unit == "s" else "%.0f MB" % (value / 1e6)
            out.append('<text x="%.1f" y="%d" font-size="9">%s</text>' % (label_w + width + 4, y + bar_h - 2, text))
            y += bar_h
        y += gap
    return y


def render(seconds: Dict[str, Dict[str, float]], stored: Dict[str, float], note: str = "") -> str:
    out: List[str] = []
    y = _bars(out, 34, "seconds per operation (shorter is better)", [(op, seconds[op]) for op in OPERATIONS if op in seconds], "s")
    if stored:
        y = _bars(out, y + 6, "bytes stored on the remote / registry", [("image + update", stored)], "MB")
    legend = []
    x = 10
    for _key, label, colour in SERIES:
        legend.append('<rect x="%d" y="8" width="10" height="10" fill="%s"/><text x="%d" y="17">%s</text>'
                      % (x, colour, x + 14, escape(label)))
        x += 24 + 7 * len(label)
    if note:
        out.append('<text x="10" y="%d" font-size="9" fill="#555">%s</text>' % (y + 10, escape(note)))
        y += 14
    return ('<svg xmlns="http://www.w3.org/2000/svg" width="700" height="%d" font-family="sans-serif" font-size="11">\n'
            '<rect width="100%%" height="100%%" fill="white"/>\n%s\n%s\n</svg>\n' % (y + 6, "".join(legend), "\n".join(out)))


def main(argv: List[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write(__doc__)
        return 2
    with open(argv[0], encoding="utf-8") as source:
        seconds, stored = parse_table(source.read())
    with open(argv[1], "w", encoding="utf-8") as target:
        target.write(render(seconds, stored, "medians of registry_bench.py, from the table in %s" % argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The README's performance chart is drawn from the README's own table (benchmarks/chart.py): numbers changed in
one are changed in the other."""

import os
import re
import sys

from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import chart  # noqa: E402  pylint: disable=wrong-import-position

README = os.path.join(REPO, "README.md")
SVG = os.path.join(REPO, "benchmarks", "registry-bench.svg")


def test_the_chart_is_the_readme_table_drawn():
    with open(README, encoding="utf-8") as f:
        readme = f.read()
    assert "](benchmarks/registry-bench.svg)" in readme
    expected = chart.render(*chart.parse_table(readme), note="medians of registry_bench.py, from the table in README.md")
    with open(SVG, encoding="utf-8") as f:
        assert f.read() == expected, "redraw it: python3 benchmarks/chart.py README.md benchmarks/registry-bench.svg"


def test_every_operation_and_path_of_the_table_is_a_bar():
    seconds, stored = chart.parse_table(open(README, encoding="utf-8").read())
    assert sorted(seconds) == sorted(chart.OPERATIONS)
    assert all(sorted(values) == sorted(key for key, _l, _c in chart.SERIES) for values in seconds.values()), seconds
    assert sorted(stored) == sorted(key for key, _l, _c in chart.SERIES), stored
    with open(SVG, encoding="utf-8") as f:
        bars = re.findall(r"<rect x=\"190\"", f.read())
    assert len(bars) == len(chart.OPERATIONS) * len(chart.SERIES) + len(chart.SERIES)

"""The budget curve's report (scripts/bench_curve.py): the table, the verdict on the 95% target
and the plot, from the points' figures (the training itself is the yardstick's, tested there)."""

import argparse
import importlib.util
import sys
from pathlib import Path
from xml.etree import ElementTree

ROOT = Path(__file__).resolve().parents[1]


def _module():
    sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location("bench_curve", ROOT / "scripts" / "bench_curve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _point(steps, epochs, accuracy, teacher=0.6462):
    return {"steps": steps, "tokens": steps * 2048, "epochs": epochs, "name": f"curve-{steps}-{epochs:g}",
            "accuracy": accuracy, "interval": [accuracy - 0.019, accuracy + 0.019], "teacher": teacher,
            "en": accuracy + 0.06, "vs_teacher_p": 1e-9, "seconds": {"phase 1": 600}, "share": accuracy / teacher}


def _write(tmp_path, points):
    module = _module()
    args = argparse.Namespace(target="fr", steps="300,1000", epochs="1,3", eval_limit=0, out=tmp_path / "curve")
    module._write(args, tmp_path, points)
    svg = tmp_path / "curve.svg"
    return (tmp_path / "curve.md").read_text(encoding="utf-8"), svg.read_text(encoding="utf-8") if svg.exists() else None


def test_the_table_says_where_the_curve_stops_below_the_target(tmp_path):
    points = [_point(300, 1, 0.5884), _point(300, 3, 0.5950), _point(1000, 1, 0.6010)]
    table, svg = _write(tmp_path, points)
    assert "not reached by the points measured (best 93.0% of (a), at 1,000 steps, 1+1 epochs)" in table
    assert "| 1,000 (2.05M) | 1 + 1 |" in table and "| 60.10 | 58.20-62.00 | 93.0% |" in table
    assert table.count("\n| ") == 2 + len(points)  # header, rule, one row per point
    tree = ElementTree.fromstring(svg)  # well-formed, one line per phase-2 budget, one dot per point
    ns = "{http://www.w3.org/2000/svg}"
    assert len(tree.findall(f"{ns}polyline")) == 2
    assert len(tree.findall(f"{ns}circle")) == len(points)


def test_a_point_at_95_percent_of_the_teacher_is_reported_as_reached(tmp_path):
    table, _ = _write(tmp_path, [_point(300, 1, 0.5884), _point(3000, 3, 0.95 * 0.6462 + 0.0001)])
    assert "reached: 3,000 steps, 3+3 epochs" in table
    assert "not reached by the points measured" not in table


def test_the_points_not_measured_yet_are_named(tmp_path):
    table, _ = _write(tmp_path, [_point(300, 1, 0.5884)])
    assert "Not measured yet" in table
    assert "300 steps with 3+3 epochs; 1,000 steps with 1+1 epochs; 1,000 steps with 3+3 epochs." in table
    table, _ = _write(tmp_path, [_point(n, e, 0.59) for n in (300, 1000) for e in (1, 3)])
    assert "Not measured yet" not in table


def test_before_any_point_the_page_says_there_is_no_figure_yet(tmp_path):
    table, _ = _write(tmp_path, [])
    assert "has not finished a point yet: no figure here" in table
    assert "300 steps with 1+1 epochs" in table
    assert not (tmp_path / "curve.svg").exists()

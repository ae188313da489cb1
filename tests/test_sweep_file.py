"""Sweep files (base / set / grid / cases / axes / seeds), results.csv and the worst-case headline."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from trustworthy_dl.cli import main
from trustworthy_dl.engine.sweep import sweep_points
from trustworthy_dl.engine.sweep_file import is_sweep_file, read_sweep_file, yaml_text
from trustworthy_dl.errors import ConfigError
from trustworthy_dl.report.sweep_tables import headline, headline_markdown

ROOT = Path(__file__).resolve().parents[1]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_yaml_text_reads_back_as_the_value() -> None:
    import yaml

    for v in ["alie", "1e-3", "a,b", True, 0.1, 3, [1, 2], {"f": 4}, "none", "yes"]:
        assert yaml.safe_load(yaml_text(v)) == v, v


def test_sweep_file_parses_and_orders_axes(tmp_path: Path) -> None:
    base = _write(tmp_path / "base.yaml", "distributed: {num_nodes: 4}\n")
    _write(tmp_path / "cases.yaml", "flip: {attack.name: sign_flip}\nnone: {attack.name: none}\n")
    sweep = _write(
        tmp_path / "s.yaml",
        "base: base.yaml\nset: {training.max_rounds: 2}\ncases: cases.yaml\n"
        "grid: {aggregation.name: [mean, median]}\n"
        "axes: {defence: {plain: {security.attack_detection: false}}}\nseeds: [0, 1]\n",
    )
    assert is_sweep_file(sweep) and not is_sweep_file(base)
    spec = read_sweep_file(sweep)
    assert spec.base == os.path.normpath(base) and spec.overrides == ["training.max_rounds=2"]
    points = sweep_points(spec)
    assert len(points) == 2 * 1 * 2 * 2
    assert points[0] == (("case", "flip"), ("defence", "plain"), ("aggregation.name", "mean"), ("seed", "0"))
    assert spec.headline_over() == ["case"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("base: nothere.yaml\n", "base config"),
        ("base: b.yaml\ngrid: {attack.name: alie}\n", "non-empty list"),
        ("base: b.yaml\nseeds: [0, 0]\n", "repeat"),
        ("base: b.yaml\nseeds: [-1]\n", "integers >= 0"),
        ("base: b.yaml\nbogus: 1\n", "unknown key"),
        ("base: b.yaml\naxes: {d: {x: []}}\n", "must map dotted config keys"),
        ("base: b.yaml\nheadline: {metric: a, worst: b}\n", "headline takes metric and over"),
        ("base: b.yaml\ncases: missing.yaml\n", "missing.yaml"),
    ],
)
def test_bad_sweep_files_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    _write(tmp_path / "b.yaml", "seed: 0\n")
    with pytest.raises(ConfigError, match=message):
        read_sweep_file(_write(tmp_path / "s.yaml", text))


def test_headline_worst_case_over_attacks_mean_and_spread_over_seeds() -> None:
    rows = []
    acc = {("mean", "none"): [0.9, 0.8], ("mean", "alie"): [0.5, 0.3], ("mean", "ipm"): [0.7, 0.7]}
    acc |= {("median", "none"): [0.85, 0.85], ("median", "alie"): [0.8, 0.6], ("median", "ipm"): [0.6, 0.6]}
    for (agg, attack), values in acc.items():
        for seed, v in enumerate(values):
            rows.append(
                {
                    "aggregation.name": agg,
                    "attack.name": attack,
                    "seed": str(seed),
                    "status": "ok",
                    "test_accuracy": v,
                }
            )
    rows.append({"aggregation.name": "median", "attack.name": "ipm", "seed": "2", "status": "missing"})
    table = headline(
        rows, axes=["aggregation.name", "attack.name", "seed"], over=["attack.name"], metric="test_accuracy"
    )
    by = {t["defence"]["aggregation.name"]: t for t in table}
    assert by["mean"]["worst"]["attack"] == "alie" and by["mean"]["worst"]["mean"] == pytest.approx(0.4)
    assert by["mean"]["worst"]["std"] == pytest.approx(0.1414, abs=1e-4)
    assert by["mean"]["no_attack"]["mean"] == pytest.approx(0.85)  # not part of the worst case
    assert by["median"]["worst"]["attack"] == "ipm" and by["median"]["attacks"]["ipm"]["n"] == 2
    md = headline_markdown(table, "test_accuracy")
    assert "| aggregation.name | no attack | alie | ipm | worst case |" in md
    assert "**0.400 ± 0.141** (alie)" in md
    # lower is better for perplexity: the worst case is the maximum
    for r in rows:
        r["perplexity"] = r.get("test_accuracy")
    table = headline(
        rows, axes=["aggregation.name", "attack.name", "seed"], over=["attack.name"], metric="perplexity"
    )
    assert {t["defence"]["aggregation.name"]: t["worst"]["attack"] for t in table} == {
        "mean": "ipm",
        "median": "alie",
    }


@pytest.mark.slow
def test_tdl_sweep_file_runs_seeds_writes_csv_and_headline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = _write(
        tmp_path / "s.yaml",
        f"base: {ROOT / 'configs' / 'quickstart.yaml'}\n"
        "set: {training.max_rounds: 2, training.batch_size: 8, distributed.num_nodes: 4, attack.num_byzantine: 1}\n"
        "grid: {attack.name: [none, sign_flip]}\n"
        "axes: {defence: {mean: {aggregation.name: mean}, median: {aggregation.name: median}}}\n"
        "seeds: [0, 1]\nout: out\n",
    )
    assert main(["sweep", str(sweep), "--jobs", "2", "--quiet"]) == 0
    out = tmp_path / "out"
    with (out / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8 and {r["status"] for r in rows} == {"ok"}
    assert {r["seed"] for r in rows} == {"0", "1"}
    summary = json.loads((out / "defence=median-name=sign_flip-seed=1" / "summary.json").read_text())
    assert summary["seed"] == 1 and summary["aggregator"] == "median"
    head = json.loads((out / "headline.json").read_text())
    assert head["over"] == ["attack.name"]
    assert [(r["defence"]["defence"], r["worst"]["n"]) for r in head["rows"]] == [("mean", 2), ("median", 2)]
    printed = capsys.readouterr().out
    assert "worst case" in printed and "headline" in printed
    # rerun: nothing to do; an extra --grid axis from the command line adds to the file's
    assert main(["sweep", str(sweep), "--quiet"]) == 0
    assert "8 already done" in capsys.readouterr().out


def test_every_shipped_sweep_file_parses_and_validates() -> None:
    from trustworthy_dl.config import load_config
    from trustworthy_dl.engine.sweep import _overrides

    files = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))
    assert files
    for f in files:
        spec = read_sweep_file(f)
        for point in sweep_points(spec):
            load_config(spec.base, [*spec.overrides, *_overrides(point, spec.named)])

"""`tdl report`: HTML + Markdown for a run and a sweep, opened in headless Chromium; TensorBoard."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from trustworthy_dl.cli import main
from trustworthy_dl.report.experiment import experiment_tables, write_experiment_tables
from trustworthy_dl.report.tensorboard import record_scalars

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    *("--set", "distributed.num_nodes=4", "--set", "attack.num_byzantine=1"),
    *("--set", "training.batch_size=8", "--set", "training.max_rounds=4", "--set", "training.eval_every=2"),
]


def _small_run(out: Path, *extra: str) -> int:
    """A few rounds of the quickstart under a sign-flip attack with stage-1 detection on."""
    sets = ["attack.name=sign_flip", "security.attack_detection=true", *extra]
    args = [a for s in sets for a in ("--set", s)]
    return main(
        ["run", str(ROOT / "configs" / "quickstart.yaml"), *SMALL, *args, "--out", str(out), "--quiet"]
    )


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def open_in_chromium(report: Path) -> tuple[list[list[object]], list[str]]:
    """Load ``report`` in headless Chromium inside a harness page; return each image's
    (src prefix, complete, naturalWidth) and the console messages the report produced."""
    browser = _browser()
    if browser is None:
        pytest.skip("no chromium here (.ci/run installs Debian's chromium package)")
    harness = report.parent / "_harness.html"
    harness.write_text(
        f'<html><body><iframe id="f" src="{report.name}"></iframe><pre id="out">pending</pre><script>'
        "document.getElementById('f').addEventListener('load', () => {"
        " const d = document.getElementById('f').contentDocument;"
        " const imgs = [...d.images].map(i => [i.getAttribute('src').slice(0, 22), i.complete, i.naturalWidth]);"
        " document.getElementById('out').textContent = JSON.stringify(imgs); });"
        "</script></body></html>"
    )
    proc = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--allow-file-access-from-files",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
            "--dump-dom",
            harness.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    harness.unlink()
    m = re.search(r'<pre id="out">(.*?)</pre>', proc.stdout, re.S)
    assert m and m.group(1) != "pending", (
        f"the report did not load: {proc.stdout[-500:]} {proc.stderr[-2000:]}"
    )
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line and report.name in line]
    return json.loads(m.group(1)), console


def _check_page(report: Path, min_images: int) -> None:
    images, console = open_in_chromium(report)
    assert console == [], console
    assert len(images) >= min_images
    assert all(src.startswith("data:image/png") and done and width > 0 for src, done, width in images), images


@pytest.mark.slow
def test_run_report_html_markdown_and_browser(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert _small_run(run, "security.gradient_verification=true") == 0
    assert main(["report", str(run)]) == 0
    assert "report.html" in capsys.readouterr().out
    html = (run / "report.html").read_text()
    for title in ("Training curves", "Trust and detection", "Time per phase", "Config"):
        assert f"<h2>{title}</h2>" in html
    md = (run / "report.md").read_text()
    assert "![trust per node](report/trust.png)" in md and (run / "report" / "trust.png").is_file()
    assert "| tp | fp | tn | fn |" in md
    _check_page(run / "report.html", min_images=5)


@pytest.mark.slow
def test_sweep_report_heatmap_curves_and_browser(tmp_path: Path) -> None:
    sweep = tmp_path / "s.yaml"
    sets = "{" + ", ".join(a.split("=")[0] + ": " + a.split("=")[1] for a in SMALL[1::2]) + "}"
    sweep.write_text(
        f"base: {ROOT / 'configs' / 'quickstart.yaml'}\nset: {sets}\n"
        "grid: {attack.name: [none, sign_flip, gaussian]}\n"
        "axes: {defence: {mean: {aggregation.name: mean},"
        " defended: {security.attack_detection: true, security.gradient_verification: true, aggregation.name: median}}}\n"
    )
    out = tmp_path / "sw"
    assert main(["sweep", str(sweep), "--out", str(out), "--jobs", "2", "--quiet"]) == 0
    tables = experiment_tables(out, intensity=["attack.num_byzantine"])
    det = {(r["defence"], r["attack"]): r for r in tables["detection"]}
    flip = det[("defended", "sign_flip")]
    assert flip["fn_rate"] <= 0.5 and flip["fp_rate"] == 0 and flip["latency_max"] <= 2
    perf = {(r["defence"], r["attack"]): r for r in tables["performance"]}
    assert perf[("mean", "gaussian")]["degradation"] > perf[("defended", "gaussian")]["degradation"]
    assert {r["defence"] for r in tables["system"]} == {"mean", "defended"}
    assert tables["reassignment"] and all(r["events"] > 0 for r in tables["reassignment"])
    write_experiment_tables(out, intensity=["attack.num_byzantine"])
    assert main(["report", str(out)]) == 0
    html = (out / "report.html").read_text()
    for title in (
        "Headline: worst-case test_accuracy over attacks",
        "Test curves per setting",
        "Trust trajectories",
        "Detection",
        "Time per phase and overhead",
        "All runs",
    ):
        assert f"<h2>{title}</h2>" in html, title
    md = (out / "report.md").read_text()
    assert "![test_accuracy: defence x attack](report/heatmap.png)" in md
    _check_page(out / "report.html", min_images=5)
    # a run directory that went missing after the sweep: one line naming it, no traceback
    shutil.rmtree(out / "defence=mean-name=gaussian")
    assert main(["report", str(out)]) == 2


def test_report_of_a_directory_without_results_names_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "summary.json").write_text("{broken")
    assert main(["report", str(tmp_path)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_tensorboard_scalars_of_a_record() -> None:
    rec = {
        "round": 3,
        "loss": 1.5,
        "test_accuracy": 0.8,
        "trust": [0.9, 0.5],
        "quarantined": [1],
        "security": {"flagged": [1], "confirmed": [1]},
        "time": {"compute": 0.1},
        "finite": True,
    }
    s = record_scalars(rec)
    assert s == {
        "train/loss": 1.5,
        "test/accuracy": 0.8,
        "trust/node_0": 0.9,
        "trust/node_1": 0.5,
        "detection/flagged": 1.0,
        "detection/confirmed": 1.0,
        "detection/quarantined": 1.0,
        "time/compute": 0.1,
    }


@pytest.mark.slow
def test_tensorboard_flag_writes_scalars(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert _small_run(run, "output.tensorboard=true") == 0
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "test/accuracy", "trust/node_0", "detection/quarantined", "time/compute"} <= tags
    loss = [e.value for e in acc.Scalars("train/loss")]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert loss == pytest.approx([r["loss"] for r in records])


@pytest.mark.parametrize(
    "script",
    [
        "experiments/image_classification/run_cifar10_experiment.py",
        "experiments/language_modeling/run_gpt2_experiment.py",
    ],
)
def test_experiment_scripts_parse_their_arguments(script: str) -> None:
    import sys

    proc = subprocess.run(
        [sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "--quick" in proc.stdout and "--device" in proc.stdout, proc.stderr

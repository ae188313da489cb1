"""Bad input never crashes and never trains the wrong thing: every malformed config, file or
command line ends in exit status 2 and one line naming the field or file, with no traceback."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from trustworthy_dl.cli import main
from trustworthy_dl.config import Config

REPO = Path(__file__).resolve().parents[1]


def _validate(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    code = main(["validate", str(path), *extra])
    out = capsys.readouterr()
    assert code == 2, f"exit {code}: {out.out[-500:]}"
    message = out.err.strip()
    assert message.startswith("tdl: error: ") and "\n" not in message, message
    assert "Traceback" not in out.err
    return message


def _write(tmp_path: Path, data: Any, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


# ---------------------------------------------------------------- one test per reported case


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("seed: 1\n".encode("utf-16"), "config file"),
        (bytes(range(256)) * 4, "config file"),
        ("a:\n" + "".join(" " * (i + 1) + "b:\n" for i in range(900)), "nested more than 64"),
        ("seed: 1\nseed: 2\n", "duplicate key 'seed'"),
        ("a: &x [1, 2]\nb: *x\n", "anchors and aliases"),
        ("seed: !!python/object/apply:os.system [ls]\n", "python/object/apply"),
        ("seed: 1\n---\nseed: 2\n", "single document"),
        ("- 1\n- 2\n", "must hold a mapping"),
        ("# only a comment\n", "is empty"),
    ],
)
def test_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: Any, needle: str) -> None:
    p = tmp_path / "c.yaml"
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert needle in _validate(p, capsys)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("distributed.num_nodes=1000000000000", "distributed.num_nodes"),
        ("distributed.num_nodes=true", "distributed.num_nodes: Input should be a valid integer"),
        ("security.gradient_verification=0", "valid boolean"),
        ("output.progress=0", "output.progress"),
        ("trust.initial_trust=true", "trust.initial_trust"),
        ("security.verification_rtol=inf", "finite number"),
        ("training.batch_size=1180591620717411303424", "training.batch_size"),
        ("training.batch_size=8.5", "valid integer"),
        ("seed=100000000000000000000000000", "seed"),
        ("training.learning_rate=1e308", "training.learning_rate"),
        ("training.max_rounds=100000000000", "max_rounds"),
        ("model.name=gpt2 data.name=digits", "is a text model but data.name='digits' is an image dataset"),
        ("data.name=text", "is an image model but data.name='text' is a text dataset"),
        ("trust.initial_trust=0.5", "below security.trust_threshold"),
        ("a=&x 1", "anchors and aliases"),
        (
            "faults=[{kind: crash, node: 1, round: 2, bogus: 1}]",
            "faults.0.bogus: unknown key; valid keys here: kind,",
        ),
        ("aggregation.params={f: abc}", "aggregation.params.f='abc'"),
    ],
)
def test_bad_values(capsys: pytest.CaptureFixture[str], override: str, needle: str) -> None:
    sets = (
        [a for o in override.split(" ") for a in ("--set", o)]
        if " data." in override
        else ["--set", override]
    )
    code = main(["validate", *sets])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and needle in err, err


def test_numeric_strings_stay_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--set", "training.learning_rate=5e-5"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["training"]["learning_rate"] == 5e-5


def test_memory_that_cannot_fit_is_an_error_that_says_how_much(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "validate",
            "--set",
            "distributed.num_nodes=100000",
            "--set",
            "model.name=resnet50",
            "--set",
            "data.name=cifar10",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "GiB" in err and "N=100000" in err


def test_a_failed_start_leaves_no_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    args = [
        "run",
        "--out",
        str(out),
        "--quiet",
        "--set",
        "data.name=mnist",
        "--set",
        "data.root=/nonexistent",
    ]
    assert main(args) == 2
    assert not out.exists()
    assert "not found" in capsys.readouterr().err


def test_bad_cases_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text("a: {seed: 1}\na: {seed: 2}\n")
    code = main(["sweep", "--cases", str(cases), "--out", str(tmp_path / "sw")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "duplicate key 'a'" in err and "cases file" in err


def test_cli_survives_a_closed_pipe_and_has_a_version() -> None:
    cmd = [sys.executable, "-m", "trustworthy_dl", "validate"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.read(10)
    proc.stdout.close()  # the reader leaves, as `| head -1` does
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and b"Traceback" not in err, err
    version = subprocess.run(
        [*cmd[:-1], "--version"], cwd=REPO, capture_output=True, text=True, timeout=120
    ).stdout
    assert version.startswith("tdl ")


# ---------------------------------------------------------------- generated malformed configs


def _fields(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _fields(ann, (*prefix, name))
        else:
            out.append(((*prefix, name), ann))
    return out


FIELDS = _fields(Config)
SECTIONS = [name for name, f in Config.model_fields.items() if isinstance(f.annotation, type)]


def _wrong_values(ann: Any) -> list[Any]:
    """Values of the wrong type or out of any sensible range for a field annotated ``ann``."""
    args = set(typing.get_args(ann)) | {ann}
    bad: list[Any] = [{"nested": 1}, "\x00", 10**40]
    if int in args or float in args:
        bad += [True, "abc", float("inf"), float("nan"), [1, 2], -(10**40)]
    if int in args:
        bad += [8.5, "7"]
    if bool in args:
        bad += [0, 1, "yes", 2.0]
    if str in args:
        bad += [123, 4.5, True]
    return bad


@st.composite
def _malformed(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["wrong_value", "unknown_key", "non_mapping"]))
    if kind == "wrong_value":
        path, ann = draw(st.sampled_from(FIELDS))
        value = draw(st.sampled_from(_wrong_values(ann)))
        data: dict[str, Any] = {}
        node = data
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
        return data
    if kind == "unknown_key":
        section = draw(st.sampled_from([None, *SECTIONS]))
        key = draw(st.text(alphabet="abcxyz_", min_size=1, max_size=8)).strip("_") or "zz"
        if section is None:
            return {key + "_unknown": 1}
        return {section: {key + "_unknown": 1}}
    section = draw(st.sampled_from(SECTIONS))
    return {section: draw(st.sampled_from([5, "text", [1, 2], True, 1.5]))}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_malformed())
def test_generated_malformed_configs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data: dict[str, Any]
) -> None:
    p = tmp_path / "gen.yaml"
    p.write_text(yaml.safe_dump(data, allow_unicode=True))
    code = main(["validate", str(p)])
    out = capsys.readouterr()
    if code == 0:  # a "wrong" value the schema may legitimately accept must be one it keeps as given
        resolved = yaml.safe_load(out.out)
        assert resolved is not None
        return
    message = out.err.strip()
    assert code == 2 and message.startswith("tdl: error: ") and "\n" not in message, (data, out.err)
    assert "Traceback" not in out.err


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(min_size=1, max_size=400))
def test_garbage_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str], blob: bytes) -> None:
    p = tmp_path / "blob.yaml"
    p.write_bytes(blob)
    code = main(["validate", str(p)])
    out = capsys.readouterr()
    assert code in (0, 2) and "Traceback" not in out.err
    if code == 2:
        assert "\n" not in out.err.strip()


def test_validate_refuses_what_run_refuses(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["validate", "--set", "privacy.enabled=true", "--set", "distributed.parallelism=model"]
    assert main(args) == 2
    assert "data parallelism" in capsys.readouterr().err

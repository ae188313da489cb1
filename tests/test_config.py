"""The config schema: shipped YAMLs parse, overrides apply, every kind of bad input is a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from trustworthy_dl.cli import main
from trustworthy_dl.config import Config, apply_overrides, config_from_dict, load_config
from trustworthy_dl.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_configs_are_shipped() -> None:
    names = {p.name for p in CONFIGS}
    assert {"quickstart.yaml", "gpt2_distributed.yaml", "gpt2_tiny.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_parses(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, Config)


def test_seed_config_loads_verbatim() -> None:
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "gpt2_distributed.yaml")
    assert cfg.model.name == "gpt2" and cfg.model.size == "medium"
    assert cfg.training.learning_rate == pytest.approx(5e-5)  # a string to YAML 1.1, a float to us
    assert cfg.training.batch_size == 32 and cfg.training.num_epochs == 10
    assert cfg.distributed.num_nodes == 8 and cfg.distributed.parallelism == "model"
    assert cfg.security.trust_threshold == 0.7
    assert cfg.security.attack_detection and cfg.security.gradient_verification


def test_quickstart_equals_defaults() -> None:
    """`tdl run` with no argument and `tdl run configs/quickstart.yaml` are the same run."""
    qs = load_config(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml")
    assert qs.to_dict() == Config().to_dict()


def test_overrides() -> None:
    data = apply_overrides(
        {}, ["training.learning_rate=0.1", "distributed.num_nodes=16", "attack.byzantine_ids=[1, 2]"]
    )
    cfg = config_from_dict(data)
    assert cfg.training.learning_rate == 0.1
    assert cfg.distributed.num_nodes == 16
    assert cfg.attack.byzantine_ids == [1, 2]
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        apply_overrides({}, ["training.learning_rate"])


BAD = [
    ({"training": {"batch_sise": 8}}, ["training.batch_sise", "unknown key", "batch_size"]),
    ({"modle": {"name": "cnn"}}, ["modle", "unknown key", "model"]),
    ({"training": {"batch_size": "many"}}, ["training.batch_size", "'many'"]),
    ({"training": {"batch_size": 0}}, ["training.batch_size", "greater than or equal to 1", "0"]),
    ({"distributed": {"num_nodes": 0}}, ["distributed.num_nodes", "0"]),
    ({"distributed": {"parallelism": "tensor"}}, ["distributed.parallelism", "'data'", "'tensor'"]),
    ({"attack": {"name": "sign_flip", "num_byzantine": 8}}, ["num_byzantine=8", "num_nodes=8"]),
    ({"attack": {"name": "sign_flip", "byzantine_ids": [0, 9]}}, ["byzantine_ids", "[9]", "num_nodes=8"]),
    ({"model": {"name": "resnet7"}}, ["model", "resnet7", "resnet20", "cnn"]),
    ({"model": {"name": "gpt2", "size": "huge"}}, ["huge", "tiny", "medium"]),
    ({"data": {"name": "imagenet"}}, ["data.name", "imagenet", "digits", "fashion-mnist"]),
    ({"data": {"partition": "random"}}, ["data.partition", "'iid'", "'dirichlet'", "'shards'"]),
    ({"attack": {"name": "flood"}}, ["attack.name", "flood", "alie"]),
    ({"security": {"trust_threshold": 1.5}}, ["security.trust_threshold", "1.5"]),
]


@pytest.mark.parametrize(("data", "needles"), BAD, ids=[str(b[0]) for b in BAD])
def test_bad_config_names_field_value_and_choices(data: dict, needles: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    for needle in needles:
        assert needle in str(err.value), f"{needle!r} missing from: {err.value}"


def test_bad_yaml_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    p.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["distributed.num_nodes=0"], "distributed.num_nodes"),
        (["training.batch_size=0"], "training.batch_size"),
        (["attack.name=sign_flip", "attack.num_byzantine=8"], "num_byzantine=8"),
        (["model.name=nosuch"], "nosuch"),
        (["data.name=nosuch"], "nosuch"),
        (["training.bogus=1"], "training.bogus"),
        (["data.name=mnist", "data.root=/nonexistent/dir"], "/nonexistent/dir"),
    ],
)
def test_cli_bad_input_exits_2_with_one_message(
    overrides: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["run", "--quiet", "--out", str(tmp_path / "run")]
    for o in overrides:
        args += ["--set", o]
    code, _, err = _cli(args, capsys)
    assert code == 2
    assert needle in err
    assert "Traceback" not in err
    assert err.startswith("tdl: error:")


def test_cli_validate_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli(["validate", "--set", "distributed.num_nodes=5"], capsys)
    assert code == 0 and yaml.safe_load(out)["distributed"]["num_nodes"] == 5
    for what, needle in [
        ("models", "resnet20"),
        ("datasets", "fashion-mnist"),
        ("attacks", "alie"),
        ("aggregators", "krum"),
    ]:
        code, out, _ = _cli(["list", what], capsys)
        assert code == 0 and needle in out
    code, _, err = _cli(["report", str(tmp_path)], capsys)
    assert code == 2 and "summary.json" in err

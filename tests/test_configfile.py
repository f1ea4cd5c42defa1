"""Config files and overrides: every problem is listed at once with its key, before any work starts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from common.configfile import MAX_VALUE_ITEMS, load_structured, number_problems, read_yaml_mapping
from common.errors import ConfigError
from encoder.config import load_config
from sefar.cli import main

SHIPPED = Path(__file__).resolve().parents[1] / "configs" / "encoder" / "syngym_tiny.yaml"


def _problems(err: pytest.ExceptionInfo) -> list[str]:
    return [line.removeprefix("  - ") for line in str(err.value).splitlines()[1:]]


@pytest.mark.parametrize("text, message", [
    ("optim:\n  lr: [1\n", r"bad.yaml:3: invalid YAML: .*expected ',' or ']'"),
    ("optim:\n  lr: 1\n  lr: 2\n", r"bad.yaml:3: invalid YAML: duplicate key 'lr' \(first given on line 2\)"),
    ("- data\n- model\n", r"bad.yaml: the top level must be a mapping of keys \(section: ...\), not a list"),
    ("1: x\n", r"bad.yaml:1: invalid YAML: key 1 is not a name"),
    ("just text\n", r"bad.yaml: the top level must be a mapping .* not a str"),
])
def test_unreadable_yaml_is_one_error_with_its_line(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_empty_yaml_means_the_defaults(tmp_path):
    (tmp_path / "empty.yaml").write_text("# nothing set\n")
    assert read_yaml_mapping(tmp_path / "empty.yaml") == {}
    assert load_config(tmp_path / "empty.yaml") == load_config(None)


def test_yes_and_no_are_strings_in_files_and_overrides_as_in_yaml_1_2(tmp_path):
    """YAML 1.1 reads no/yes/on/off as booleans (so ``mixed_precision=no``, the documented value, became 'False'
    and was refused); only true/false are booleans here, in files and in overrides alike."""
    path = tmp_path / "run.yaml"
    path.write_text("mixed_precision: no\noptim:\n  nesterov: False\naug:\n  flip: TRUE\n")
    cfg = load_config(path)
    assert (cfg.mixed_precision, cfg.optim.nesterov, cfg.aug.flip) == ("no", False, True)
    cfg = load_config(None, ["mixed_precision=no", "optim.nesterov=true", "aug.flip=false"])
    assert (cfg.mixed_precision, cfg.optim.nesterov, cfg.aug.flip) == ("no", True, False)
    assert load_config(path, ["mixed_precision=bf16"]).mixed_precision == "bf16"
    with pytest.raises(ConfigError) as err:
        load_config(None, ["aug.flip=yes", "optim.nesterov=off", "mixed_precision=off"])
    assert _problems(err) == ["aug.flip='yes': must be true or false", "optim.nesterov='off': must be true or false",
                              "mixed_precision='off': use no or bf16"]
    cfg = load_config(None, ["ssl={adaptive: false, mix: true}", "optim.lr=2e-3", "data.root=2026-01-01",
                             "aug.randaug_magnitude=1_0"])
    assert (cfg.ssl.adaptive, cfg.ssl.mix, cfg.optim.lr, cfg.data.root) == (False, True, 0.002, "2026-01-01")
    assert cfg.aug.randaug_magnitude == 10
    with pytest.raises(ConfigError) as err:
        load_config(None, ["data={categories: no, label_ratio: 1e-1}", "ssl={adaptive: yes}"])
    assert _problems(err) == ["ssl.adaptive='yes': must be true or false"]
    path.write_text("aug:\n  flip: on\n")
    with pytest.raises(ConfigError, match=r"run.yaml: aug.flip='on': must be true or false"):
        load_config(path)


def test_every_bad_value_is_listed_with_its_key():
    with pytest.raises(ConfigError) as err:
        load_config(SHIPPED, ["optim.epochs=-1", "optim.batch_size=0", "optim.milestones=[abc]", "optim.lrr=1",
                              "ssl.beta=nan", "optim.nesterov=3", "optim=5", "model.img_size=1e400", "nokey",
                              "model.head_dropout=1.5", "aug.scale_jitter=[1]"])
    problems = _problems(err)
    expected = ["override 'nokey'", "optim.milestones=['abc']: could not be converted to Integer",
                "optim.lrr: unknown key in optim; did you mean optim.lr?", "optim.nesterov=3: must be true or false",
                "optim=5: expected a mapping of OptimConfig keys", "model.img_size=inf", "aug.scale_jitter=[1]",
                "optim.epochs=-1: must be > 0", "optim.batch_size=0: must be > 0", "ssl.beta=nan: must be a finite number",
                "model.head_dropout=1.5: must be < 1"]
    for text in expected:
        assert sum(p.startswith(text) for p in problems) == 1, (text, problems)
    assert len(problems) == len(expected), problems


@pytest.mark.parametrize("override, problem", [
    ("optim.lr=nan", "optim.lr=nan: must be a finite number"),
    ("optim.lr=-1", "optim.lr=-1.0: must be > 0"),
    ("optim.micro_batch_size=0", "optim.micro_batch_size=0: must be > 0"),
    ("seed=-3", "seed=-3: must be >= 0"),
])
def test_cli_reports_bad_values_before_training(tmp_path, capsys, override, problem):
    code = main(["encoder", "train", str(SHIPPED), f"out={tmp_path / 'run'}", override])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: invalid config:\n") and f"  - {problem}\n" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_yaml_aliases_cannot_blow_up_a_value(tmp_path):
    rows = ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for prev, name in zip("abcdef", "bcdefg"):
        rows.append(f"{name}: &{name} [{', '.join(['*' + prev] * 10)}]")
    rows.append("optim:\n  milestones: *g")  # 10**7 items once expanded
    (tmp_path / "laughs.yaml").write_text("\n".join(rows) + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "laughs.yaml")
    assert f"optim.milestones: the value has more than {MAX_VALUE_ITEMS} items" in str(err.value)


def test_a_bad_config_yaml_inside_a_run_folder_is_one_error(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("- not\n- a mapping\n")
    (tmp_path / "checkpoints").mkdir()
    code = main(["encoder", "export", str(tmp_path), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("error:") == 1 and "the top level must be a mapping" in err


@dataclasses.dataclass
class _Inner:
    rate: float = 0.5
    signed: float = -1.0
    sizes: tuple[int, ...] = (1, 2)


@dataclasses.dataclass
class _Outer:
    name: str = "x"
    inner: _Inner = dataclasses.field(default_factory=_Inner)


def test_generic_number_rules_cover_every_field():
    cfg = _Outer(inner=_Inner(rate=float("inf"), signed=-2.0, sizes=(3, -1)))
    assert number_problems(cfg, signed={"inner.signed"}) == [
        "inner.rate=inf: must be a finite number", "inner.sizes[1]=-1: must be >= 0"]
    assert number_problems(_Outer(), positive={"inner.sizes"}, below_one={"inner.rate"}, signed={"inner.signed"}) == []
    built, problems = load_structured(_Outer, overrides=["inner.rate=2", "inner.size=1"])
    assert built.inner.rate == 2.0 and problems == ["inner.size: unknown key in inner; did you mean inner.sizes?"]

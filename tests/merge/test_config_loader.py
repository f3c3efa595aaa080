import math
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from merge.config import ConfigError, from_mapping, load_config, to_mapping


@dataclass
class Inner:
    lr: float = 1e-5
    steps: int = 10


@dataclass
class Outer:
    name: str
    kind: Literal["ema", "sft"] = "ema"
    mu: float = 0.01
    tags: list[str] = field(default_factory=list)
    seed: Optional[int] = None
    inner: Inner = field(default_factory=Inner)

    def validate(self):
        if not 0 <= self.mu <= 1:
            raise ConfigError(f"mu must be in [0, 1], got {self.mu}")


def test_nested_round_trip():
    cfg = from_mapping(Outer, {"name": "x", "inner": {"lr": 3, "steps": 5}, "tags": ["a"], "seed": 1})
    assert cfg.inner.lr == 3.0 and isinstance(cfg.inner.lr, float)
    assert cfg.inner.steps == 5 and cfg.tags == ["a"] and cfg.seed == 1
    assert from_mapping(Outer, to_mapping(cfg)) == cfg


@pytest.mark.parametrize("data, msg", [
    ({"name": "x", "typo": 1}, "unknown key 'typo'"),
    ({"name": "x", "inner": {"lrr": 1}}, r"config.inner: unknown key 'lrr'"),
    ({}, "config.name is required"),
    ({"name": "x", "kind": "kl"}, "config.kind: 'kl' is not one of"),
    ({"name": "x", "inner": {"steps": 1.5}}, "config.inner.steps: expected an integer"),
    ({"name": "x", "inner": {"steps": True}}, "expected an integer"),
    ({"name": "x", "mu": 2}, r"mu must be in \[0, 1\]"),
    ({"name": 3}, "config.name: expected a string"),
    ([1, 2], "expected a mapping"),
])
def test_bad_configs_name_the_key(data, msg):
    with pytest.raises(ConfigError, match=msg):
        from_mapping(Outer, data)


def test_load_config_errors_name_the_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\nmu: 0.5\n")
    assert load_config(Outer, p).mu == 0.5
    p.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(Outer, p)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(Outer, tmp_path / "missing.yaml")
    p.write_text("name: x\nbogus: 1\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown key 'bogus'"):
        load_config(Outer, p)


@pytest.mark.parametrize("text, message", [
    ("name: x\nbogus: 1\n", "unknown key 'bogus' (known: inner, kind, mu, name, seed, tags)"),
    ("name: x\ninner: {lrr: 1}\n", "inner: unknown key 'lrr' (known: lr, steps)"),
    ("mu: 0.5\n", "name is required"),
    ("name: x\ninner: {lr: abc}\n", "inner.lr: expected a number, got 'abc'"),
    ("name: x\ninner: {steps: 1.5}\n", "inner.steps: expected an integer, got 1.5"),
    ("name: x\ninner: {steps: 1e3}\n", "inner.steps: expected an integer, got '1e3'"),   # only floats take strings
    ("name: x\nkind: kl\n", "kind: 'kl' is not one of ['ema', 'sft']"),
    ("name: x\ntags: [a, 3]\n", "tags[1]: expected a string, got 3"),
    ("name: x\ntags: a\n", "tags: expected a list, got 'a'"),
    ("name: [1]\n", "name: expected a string, got [1]"),
    ("[1, 2]\n", "expected a mapping, got [1, 2]"),
    ("name: x\ninner: 3\n", "inner: expected a mapping, got 3"),
    ("name: x\nmu: nan\n", "mu: expected a finite number, got 'nan'"),
    ("name: x\nmu: -inf\n", "mu: expected a finite number, got '-inf'"),
    ("name: x\nmu: .nan\n", "mu: expected a finite number, got nan"),
    ("name: x\ninner: {lr: 1e999}\n", "inner.lr: expected a finite number, got '1e999'"),
    ("name: x\ninner: {lr: 1e-3x}\n", "inner.lr: expected a number, got '1e-3x'"),
    ("name: x\ninner: {lr: true}\n", "inner.lr: expected a number, got True"),
])
def test_load_config_errors_read_file_then_key_path(tmp_path, text, message):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(Outer, p)
    assert str(e.value) == f"{p}: {message}"


def test_validate_errors_keep_their_own_wording(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\nmu: 2\n")
    with pytest.raises(ConfigError) as e:
        load_config(Outer, p)
    assert str(e.value) == "mu must be in [0, 1], got 2.0"


@pytest.mark.parametrize("text, value", [("1e-3", 1e-3), ("5E+2", 500.0), ("-2.5e-4", -2.5e-4), ("'3'", 3.0),
                                         ("\"1e-6\"", 1e-6), (".5", 0.5), ("7", 7.0)])
def test_yaml_11_exponent_strings_are_numbers_where_a_float_is_due(tmp_path, text, value):
    """PyYAML reads YAML 1.1: `1e-3` (no dot) is a string. Where a float is due it is the number."""
    p = tmp_path / "c.yaml"
    p.write_text(f"name: x\nmu: 0.5\ninner: {{lr: {text}}}\n")
    cfg = load_config(Outer, p)
    assert cfg.inner.lr == value and isinstance(cfg.inner.lr, float)


def test_float_strings_in_optional_and_list_fields():
    @dataclass
    class Params:
        lam: Optional[float] = None
        weights: Optional[list[float]] = None
        seed: int = 0

    p = from_mapping(Params, {"lam": "1e-1", "weights": ["1e0", 2, "3.5"]})
    assert p.lam == 0.1 and p.weights == [1.0, 2.0, 3.5]
    for bad, msg in [({"lam": "abc"}, "config.lam: expected a number, got 'abc'"),
                     ({"weights": ["1", "inf"]}, "config.weights[1]: expected a finite number, got 'inf'"),
                     ({"seed": "1"}, "config.seed: expected an integer, got '1'"),
                     ({"lam": math.nan}, "config.lam: expected a finite number, got nan")]:
        with pytest.raises(ConfigError) as e:
            from_mapping(Params, bad)
        assert str(e.value) == msg

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

"""Small pieces of harness.evaluate and harness.cache."""
from __future__ import annotations

import pytest
import torch

from harness.cache import HashIndex, ResultCache, cache_key, content_hash
from harness.evaluate import Point, baseline_name, parse_etas
from harness.sxs import opponents
from harness.manifest import HarnessError
from tests.tiny import save, tiny_causal_lm


def test_parse_etas():
    assert parse_etas("0.5,0,1,0.5") == [0.0, 0.5, 1.0]
    assert parse_etas([0.3]) == [0.3]
    for bad in ("-0.1", "1.01", "x", ""):
        with pytest.raises(HarnessError, match="--etas"):
            parse_etas(bad)


def test_hash_index_remembers_and_notices_changes(tmp_path):
    m, tok = tiny_causal_lm(seed=0)
    d = save(m, tok, tmp_path / "ck")
    idx = HashIndex(tmp_path / "ev")
    h = idx(d)
    assert h == content_hash(d) and HashIndex(tmp_path / "ev").known  # persisted
    with torch.no_grad():
        m.lm_head.weight.add_(1.0)
    save(m, tok, d)
    assert HashIndex(tmp_path / "ev")(d) == content_hash(d) != h


def test_cache_roundtrip(tmp_path):
    c = ResultCache(tmp_path)
    s = {"n": 3}
    assert c.get("h", "score", s) is None
    c.put("h", "score", s, {"kl": 1.5}, [{"id": "a"}])
    assert c.get("h", "score", s)["value"] == {"kl": 1.5} and c.records("h", "score", s) == [{"id": "a"}]
    assert c.get("h", "score", {"n": 4}) is None and cache_key("h", "score", s) != cache_key("h2", "score", s)


def test_opponents_and_names(tmp_path):
    pts = [Point("sft", "sft", "s"), Point("iter1/eta=0.5", "liti", "a", 1, eta=0.5),
           Point("iter1/eta=1", "liti", "b", 1, eta=1.0),
           Point("iter1/run1/step10", "run", "c", 1, 1, 10), Point("iter1/run1/step20", "run", "d", 1, 1, 20),
           Point("baseline/x", "baseline", "e")]
    assert [o.name for o in opponents(pts)] == ["sft", "iter1/run1/step20", "iter1/eta=1", "baseline/x"]
    assert baseline_name("org/model-name") == "baseline/org_model-name"
    assert baseline_name(str(tmp_path)) == f"baseline/{tmp_path.name}"

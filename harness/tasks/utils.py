"""Local data for the project's offline lm-eval tasks (loaded by `custom_dataset` in the YAMLs).

- `champ_math`: the 270 CHAMP competition problems (package `champ-dataset`, read from its
  `dataset_files/v0.json`). Target: the reference answer; when it reads "X, or equivalently N"
  the last form is used. Scored by exact match after the "Final Answer:" extraction filter.
- `synth_gsm8k`: GSM8K-format arithmetic word problems generated in code with a fixed seed
  (test: 500 problems, seed 1234; few-shot pool: 50 problems, seed 4321), answers in the GSM8K
  "<reasoning>\n#### <number>" format, scored with the same filters as lm-eval's `gsm8k`.
"""
from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

NAMES = ["Ava", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jade", "Kofi", "Lena", "Mateo", "Nia"]
ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "cookies", "stamps", "shells"]


def _problem(rng: random.Random) -> dict:
    """One word problem and its GSM8K-style worked answer."""
    name, other = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    kind = rng.randrange(4)
    if kind == 0:
        a, b, c = rng.randint(5, 60), rng.randint(2, 9), rng.randint(2, 12)
        total = a + b * c
        q = f"{name} has {a} {item}. {name} buys {b} packs with {c} {item} in each pack. How many {item} does {name} have now?"
        s = f"The packs hold {b} * {c} = {b * c} {item}.\n{name} has {a} + {b * c} = {total} {item}.\n#### {total}"
    elif kind == 1:
        a, b = rng.randint(20, 90), rng.randint(2, 15)
        c = rng.randint(1, a - b)
        left = a - b - c
        q = f"{name} had {a} {item}, gave {b} to {other} and lost {c}. How many {item} are left?"
        s = f"{name} gave away and lost {b} + {c} = {b + c} {item}.\n{a} - {b + c} = {left} {item} are left.\n#### {left}"
    elif kind == 2:
        per, k = rng.randint(2, 12), rng.randint(2, 9)
        total = per * k
        q = f"{name} shares {total} {item} equally among {k} friends. How many {item} does each friend get?"
        s = f"Each friend gets {total} / {k} = {per} {item}.\n#### {per}"
    else:
        price, n, paid = rng.randint(2, 9), rng.randint(2, 8), 0
        cost = price * n
        paid = cost + rng.randint(1, 20)
        q = f"{name} buys {n} {item} at ${price} each and pays with ${paid}. How much change does {name} get, in dollars?"
        s = f"The {item} cost {n} * {price} = ${cost}.\nThe change is {paid} - {cost} = ${paid - cost}.\n#### {paid - cost}"
    return {"question": q, "answer": s}


def synth_gsm8k_docs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [_problem(rng) for _ in range(n)]


def synth_gsm8k_dataset(**kwargs):
    import datasets

    return {"test": datasets.Dataset.from_list(synth_gsm8k_docs(500, 1234)),
            "train": datasets.Dataset.from_list(synth_gsm8k_docs(50, 4321))}


def champ_path() -> Path:
    spec = importlib.util.find_spec("champ_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the champ-dataset package is not installed (pip install --no-deps champ-dataset)")
    return Path(spec.submodule_search_locations[0]) / "dataset_files" / "v0.json"


def champ_target(answer: str) -> str:
    """The comparable form of a CHAMP answer: the last alternative of 'X, or equivalently N'."""
    return answer.split("or equivalently")[-1].strip().rstrip(".") if "or equivalently" in answer else answer.strip()


def champ_docs() -> list[dict]:
    problems = json.loads(champ_path().read_text(encoding="utf-8"))["problems"]
    return [{"id": p["identifier"], "category": p["category"], "problem": p["_text"], "answer": champ_target(p["_answer"])}
            for p in problems.values()]


def champ_dataset(**kwargs):
    import datasets

    return {"test": datasets.Dataset.from_list(champ_docs())}

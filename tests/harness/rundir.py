"""A synthetic run directory per the run-directory contract (`rl.contract`), built from tiny models in code."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from rl.config import GenerationConfig
from rl.contract import Checkpoint, Manifest, Task
from tests.tiny import save, tiny_causal_lm, tiny_classifier

PROMPTS = ["the movie was", "i think", "what a day", "my friend said", "this is", "today we", "oh no", "great"]


def perturbed(model, scale: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def build_run_dir(root: Path, iterations: int = 1, runs: int = 2, steps=(10, 20), max_new_tokens: int = 6) -> Path:
    """sft = tiny Llama; run checkpoints and slerp = perturbed copies; reward model = tiny BERT."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    model, tok = tiny_causal_lm(seed=0)
    save(model, tok, root / "sft")
    cps = [{"path": "sft", "iteration": 0, "run": None, "role": "sft", "step": 0}]
    for i in range(1, iterations + 1):
        for m in range(1, runs + 1):
            for s in steps:
                rel = f"iter{i}/run{m}/step_{s:06d}"
                save(perturbed(tiny_causal_lm(seed=0)[0], 0.02 * s / steps[-1], seed=100 * i + 10 * m + s), tok, root / rel)
                cps.append({"path": rel, "iteration": i, "run": m, "role": "run", "step": s})
        save(perturbed(tiny_causal_lm(seed=0)[0], 0.03, seed=7 + i), tok, root / f"iter{i}/slerp")
        cps.append({"path": f"iter{i}/slerp", "iteration": i, "run": None, "role": "slerp", "step": steps[-1]})
        save(perturbed(tiny_causal_lm(seed=0)[0], 0.01, seed=70 + i), tok, root / f"iter{i}/liti")
        cps.append({"path": f"iter{i}/liti", "iteration": i, "run": None, "role": "liti", "step": steps[-1]})
    rm, rtok = tiny_classifier(seed=0)
    with torch.no_grad():  # a sharper head, so P(positive) varies between completions
        rm.classifier.weight.mul_(60)
    save(rm, rtok, root / "rm")
    (root / "prompts").mkdir(exist_ok=True)
    for split in ("validation", "test"):
        (root / "prompts" / f"{split}.jsonl").write_text(
            "".join(json.dumps({"id": f"{split}-{k}", "prompt": p}) + "\n" for k, p in enumerate(PROMPTS)))
    Manifest(
        task=Task(prompts={"validation": "prompts/validation.jsonl", "test": "prompts/test.jsonl"}, reward_model="rm",
                  generation=GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.9)),
        config={"iterations": iterations, "runs": runs, "beta": 0.1, "mu": 0.01, "eta": 0.3},
        checkpoints=[Checkpoint(c["path"], c["iteration"], c["run"], c["role"], c["step"]) for c in cps],
        complete=True,
    ).write(root)
    return root

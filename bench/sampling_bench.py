"""Sampling throughput: the project's vLLM engine against transformers `generate` at its fastest
setting here (the best of float32/bfloat16 and batch sizes), same prompts, lengths and threads.

    python bench/sampling_bench.py [--model smollm2-135m-instruct] [--prompts 256] [--new-tokens 32] [--threads 2]

Each variant runs in its own process (one vLLM engine per process) on the same held-out tweet
prompts; throughput is generated tokens (EOS included) per second of `engine.generate`, after one
warm-up call. The last line is `ratio_vs_hf=X.XX`: the vLLM engine at its fastest weight dtype over
transformers at its fastest setting; the line before it gives the same ratio for the engine's
float32 weights (the project's default, whose log-probs match the trainer's).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))   # run from a checkout: python bench/...

HF_BATCHES = (32, 64, 128, 256)


def prompts(n: int) -> list[str]:
    from rl.data import DataConfig, load_splits, prompts as make_prompts

    cfg = DataConfig()
    return [p["prompt"] for p in make_prompts(load_splits(cfg)["test"], cfg, n)]


def measure(kind: str, dtype: str, batch: int, model: str, n: int, new_tokens: int, threads: int) -> dict:
    """One variant, in this process: tokens/s of engine.generate over all prompts in batches."""
    import torch

    from merge.threads import set_threads

    set_threads(threads)
    from rl.engine import Settings, get_engine
    from rl.models import load_causal_lm, resolve_model
    from rl.sampling import encode_prompts

    where = resolve_model(model)
    m, tok = load_causal_lm(model, dtype=getattr(torch, dtype) if kind == "hf" else torch.float32)
    t0 = time.perf_counter()
    eng = get_engine(kind, m, tok, model_dir=where, dtype=dtype, max_model_len=512)
    start = time.perf_counter() - t0
    ids = encode_prompts(tok, prompts(n))
    settings = Settings(max_new_tokens=new_tokens, temperature=0.9)
    eng.generate(ids[:batch], settings, seed=0)                  # warm-up
    t0, tokens = time.perf_counter(), 0
    for b in range(0, len(ids), batch):
        tokens += sum(len(c.token_ids) for c in eng.generate(ids[b:b + batch], settings, seed=b))
    dt = time.perf_counter() - t0
    return {"kind": kind, "dtype": dtype, "batch": batch, "tokens": tokens, "seconds": dt, "tok_s": tokens / dt,
            "engine_start_s": start}


def run_variant(args, kind: str, dtype: str, batch: int) -> dict:
    cmd = [sys.executable, __file__, "--one", f"{kind},{dtype},{batch}", "--model", args.model, "--prompts",
           str(args.prompts), "--new-tokens", str(args.new_tokens), "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        return {"kind": kind, "dtype": dtype, "batch": batch, "error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        kind, dtype, batch = args.one.split(",")
        print(json.dumps(measure(kind, dtype, int(batch), args.model, args.prompts, args.new_tokens, args.threads)))
        return
    rows = [run_variant(args, "hf", d, b) for d in ("float32", "bfloat16") for b in HF_BATCHES]
    rows += [run_variant(args, "vllm", d, args.prompts) for d in ("float32", "bfloat16")]
    print(f"{args.prompts} prompts × up to {args.new_tokens} new tokens, T = 0.9, {args.threads} threads, {args.model}")
    for r in rows:
        if "error" in r:
            print(f"  {r['kind']:<5} {r['dtype']:<9} batch {r['batch']:>4}: failed ({r['error'][:120]})")
        else:
            print(f"  {r['kind']:<5} {r['dtype']:<9} batch {r['batch']:>4}: {r['tok_s']:7.1f} tok/s "
                  f"({r['tokens']} tokens in {r['seconds']:.1f} s)")
    hf = max((r for r in rows if r["kind"] == "hf" and "error" not in r), key=lambda r: r["tok_s"])
    engines = [r for r in rows if r["kind"] == "vllm" and "error" not in r]
    print(f"fastest transformers setting: {hf['dtype']} batch {hf['batch']}, {hf['tok_s']:.1f} tok/s")
    if not engines:
        print("ratio_vs_hf=n/a (vLLM did not run)")
        return
    fp32 = next((r for r in engines if r["dtype"] == "float32"), None)
    if fp32:
        print(f"vLLM float32 weights: ratio {fp32['tok_s'] / hf['tok_s']:.2f}")
    best = max(engines, key=lambda r: r["tok_s"])
    print(f"vLLM fastest: {best['dtype']} weights, {best['tok_s']:.1f} tok/s")
    print(f"ratio_vs_hf={best['tok_s'] / hf['tok_s']:.2f}")


if __name__ == "__main__":
    main()

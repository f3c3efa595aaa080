"""EMA anchor update cost: time per `merge.ema_update` call vs one AdamW step on the same parameters.

The parameters are a SmolLM2-135M-shaped Llama built in code (random weights, fp32, no download).
`ema_update` runs every RL step on the whole policy, so it must stay a small fraction of the
optimiser step (target: ≤ 0.2×) and allocate no tensors per call (checked: the EMA tensors keep
their storage and the process RSS does not grow over the timed calls).

    python bench/ema_bench.py [--threads 2] [--repeats 20]
Last line: ema_ms=A adamw_ms=B ratio=A/B
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import merge

    from merge.threads import set_threads

    set_threads(args.threads)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)   # SmolLM2-135M
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).float()
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}   # how an RL loop keeps an anchor
    opt = torch.optim.AdamW(params, lr=1e-6)
    print(f"SmolLM2-135M-shaped Llama: {n / 1e6:.1f}M fp32 parameters in {len(params)} tensors, "
          f"{args.threads} thread(s)", flush=True)

    def timed(fn) -> list[float]:
        fn()   # warm-up (AdamW allocates its state here)
        out = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
        return out

    adam = timed(opt.step)
    ptrs = [t.data_ptr() for t in ema.values()]
    rss0 = rss_mb()
    ema_t = timed(lambda: merge.ema_update(ema, model, 0.01))
    rss1 = rss_mb()
    same_storage = ptrs == [t.data_ptr() for t in ema.values()]
    mod_ema = LlamaForCausalLM(cfg).float()
    ema_mod_t = timed(lambda: merge.ema_update(mod_ema, model, 0.01))
    a, e, em = (statistics.median(x) * 1e3 for x in (adam, ema_t, ema_mod_t))
    print(f"AdamW step          median {a:8.1f} ms  (min {min(adam) * 1e3:.1f})")
    print(f"ema_update (dict)   median {e:8.1f} ms  (min {min(ema_t) * 1e3:.1f})  storage unchanged: {same_storage}; "
          f"RSS change over {args.repeats} calls: {rss1 - rss0:+.1f} MB")
    print(f"ema_update (module) median {em:8.1f} ms")
    print(f"ema_ms={e:.1f} adamw_ms={a:.1f} ratio={e / a:.3f}")


if __name__ == "__main__":
    main()

"""Streamed merge benchmark: I/O floor vs `warp merge slerp` vs mergekit nuslerp, in one run.

Builds an init and two fine-tuned-like checkpoints (init + small noise) with Llama tensor names and
shapes, sharded like real checkpoints, then runs each phase in its own process (so peak RSS is
per phase):
  (a) floor: read every input tensor (init and both models; each copied into process memory) and
      write the output shards, no arithmetic (the same reader/writer pipeline, identity merge; it
      keeps the pipeline's NaN/Inf screen of every input, which slerp folds into its Gram pass);
  (b) ours:  `warp merge slerp --init --models m1 m2 --out` (harness.cli.main);
  (c) mergekit `nuslerp` with base_model, when mergekit is importable by --mergekit-python;
  (d) in memory: `merge.slerp` on the three state dicts already loaded (the RL loop's path), timed
      alone (loading excluded), with the same thread count.
Prints each wall time and peak RSS; the last line is
  ratio_vs_copy=X peak_rss_mb=Y ratio_vs_mergekit=Z
X = ours / floor (in-process wall time, interpreter start-up excluded; ours reads the inputs
through the file mapping inside its arithmetic instead of copying them first), Y = our peak RSS,
Z = mergekit / ours (whole-command wall time, start-up included for both), or n/a.

    python bench/merge_bench.py                     # ≈0.9 GB per checkpoint in bf16
    python bench/merge_bench.py --size-gb 0.3 --dtype fp32
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HIDDEN, INTER, VOCAB = 1024, 2816, 32000


def layer_shapes(i: int) -> dict:
    p = f"model.layers.{i}."
    return {p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN), p + "self_attn.k_proj.weight": (HIDDEN, HIDDEN),
            p + "self_attn.v_proj.weight": (HIDDEN, HIDDEN), p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
            p + "mlp.gate_proj.weight": (INTER, HIDDEN), p + "mlp.up_proj.weight": (INTER, HIDDEN),
            p + "mlp.down_proj.weight": (HIDDEN, INTER), p + "input_layernorm.weight": (HIDDEN,),
            p + "post_attention_layernorm.weight": (HIDDEN,)}


def model_shapes(size_gb: float, itemsize: int) -> tuple[dict, int]:
    per_layer = sum(math.prod(s) for s in layer_shapes(0).values())
    fixed = 2 * VOCAB * HIDDEN + HIDDEN
    layers = max(1, round((size_gb * 1e9 / itemsize - fixed) / per_layer))
    shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(layers):
        shapes.update(layer_shapes(i))
    shapes["model.norm.weight"] = (HIDDEN,)
    shapes["lm_head.weight"] = (VOCAB, HIDDEN)
    return shapes, layers


def build(work: Path, size_gb: float, dtype_name: str, shard_mb: int) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    itemsize = torch.empty((), dtype=dtype).element_size()
    shapes, layers = model_shapes(size_gb, itemsize)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=layers,
                      num_attention_heads=16, num_key_value_heads=16, tie_word_embeddings=False,
                      torch_dtype={"bf16": "bfloat16", "fp32": "float32"}[dtype_name])
    cfg.architectures = ["LlamaForCausalLM"]
    g = torch.Generator().manual_seed(0)
    init = {}
    for k, s in shapes.items():   # generated once; fine-tuned = init + 1e-3·noise, one tensor at a time
        init[k] = (torch.ones(s) if len(s) == 1 else 0.02 * torch.randn(s, generator=g)).to(dtype)
    for name, seed in (("init", None), ("m1", 1), ("m2", 2)):
        d = work / name
        d.mkdir(parents=True)
        cfg.save_pretrained(d)
        gm = torch.Generator().manual_seed(seed) if seed else None
        shards, cur, size = [], {}, 0
        for k, t in init.items():
            if seed:
                t = (t.float() + 1e-3 * torch.randn(t.shape, generator=gm)).to(dtype)
            n = t.numel() * itemsize
            if cur and size + n > shard_mb * 10**6:
                shards.append(cur)
                cur, size = {}, 0
            cur[k], size = t, size + n
        shards.append(cur)
        names = [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
        for fname, sd in zip(names, shards):
            save_file(sd, str(d / fname), metadata={"format": "pt"})
        total = sum(t.numel() * itemsize for t in init.values())
        (d / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": {k: f for f, sd in zip(names, shards) for k in sd}}))
    print(f"built init, m1, m2: {len(shapes)} tensors, {layers} layers, "
          f"{total / 1e9:.2f} GB each in {dtype_name}, {len(shards)} shards of ≤{shard_mb} MB", flush=True)


def phase(name: str, work: Path) -> None:
    """Child process: run one phase, print {"wall_s", "peak_rss_mb"} as JSON on the last line."""
    t0 = time.perf_counter()
    if name.startswith("build:"):
        _, size_gb, dtype_name, shard_mb = name.split(":")
        return build(work, float(size_gb), dtype_name, int(shard_mb))
    if name == "floor":
        import dataclasses

        from merge.checkpoint import merge_checkpoints
        from merge.registry import REGISTRY, Method
        from merge.methods.linear import LitiParams

        REGISTRY["io_floor"] = Method("io_floor", LitiParams, uses_init=True, min_models=1, max_models=None,
                                      apply=_floor_apply, summary="read inputs, write init (I/O floor)")
        t0 = time.perf_counter()
        merge_checkpoints("io_floor", [work / "m1", work / "m2"], work / "out_floor", init=work / "init", progress=False)
    elif name == "ours":
        from harness.cli import main

        t0 = time.perf_counter()
        rc = main(["merge", "slerp", "--init", str(work / "init"), "--models", str(work / "m1"), str(work / "m2"),
                   "--out", str(work / "out_ours"), "--no-progress"])
        assert rc == 0
    elif name == "memory":
        import merge

        init, m1, m2 = (merge.load_state_dict(work / d) for d in ("init", "m1", "m2"))
        t0 = time.perf_counter()
        merge.slerp(init, [m1, m2])
    wall = time.perf_counter() - t0
    print(json.dumps({"wall_s": wall, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _floor_apply(key, init, models, params):
    """The I/O floor's 'merge': read (copy into memory) every input tensor, output init; no arithmetic."""
    for m in models:
        m.clone()
    return init.clone(), False


def run_measured(cmd: list[str], env: dict, log: Path) -> tuple[float, float, int, str]:
    """(whole-command wall s, peak RSS MB of that child, exit code, its stdout)."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    return wall, ru.ru_maxrss / 1024, p.returncode, log.read_text()


def mergekit_available(python: str) -> bool:
    r = subprocess.run([python, "-c", "import mergekit"], capture_output=True)
    return r.returncode == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gb", type=float, default=0.9, help="size of each checkpoint (default 0.9)")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--shard-mb", type=int, default=300, help="input shard size (default 300 MB)")
    ap.add_argument("--threads", type=int, default=2, help="torch/OMP threads in every phase (default 2)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of floor and ours, alternating (default 3; medians)")
    ap.add_argument("--workdir", default=None, help="where to build the checkpoints (default: a temp dir)")
    ap.add_argument("--mergekit-python", default=sys.executable,
                    help="python that can import mergekit (default: this one)")
    ap.add_argument("--_phase", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_work", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._phase:
        from merge.threads import set_threads

        set_threads(args.threads)
        return phase(args._phase, Path(args._work))

    work = Path(tempfile.mkdtemp(prefix="merge-bench-", dir=args.workdir))
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    try:
        # built in a child: a fork inherits the parent's peak RSS, so the parent stays small
        r = subprocess.run([sys.executable, __file__, "--_phase", f"build:{args.size_gb}:{args.dtype}:{args.shard_mb}",
                            "--_work", str(work)], env=env, cwd=ROOT)
        if r.returncode != 0:
            raise SystemExit("building the checkpoints failed")
        res = {"floor": [], "ours": [], "memory": []}
        for rep in range(args.repeats):   # alternating, so load from other processes hits all alike
            for name in ("floor", "ours", "memory"):
                shutil.rmtree(work / f"out_{name}", ignore_errors=True)
                cmd = [sys.executable, __file__, "--_phase", name, "--_work", str(work), "--threads", str(args.threads)]
                wall, rss, rc, out = run_measured(cmd, env, work / f"{name}.log")
                if rc != 0:
                    raise SystemExit(f"{name} failed:\n{out}")
                inner = json.loads(out.strip().splitlines()[-1])
                res[name].append({"wall_s": wall, "inner_s": inner["wall_s"], "peak_rss_mb": rss})
                print(f"{name:8s} wall {wall:7.2f} s (in-process {inner['wall_s']:6.2f} s)  peak RSS {rss:7.0f} MB",
                      flush=True)
        for name in ("floor", "ours", "memory"):   # median time, largest peak over the repeats
            runs = res[name]
            res[name] = {k: statistics.median(r[k] for r in runs) for k in ("wall_s", "inner_s")}
            res[name]["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
            print(f"{name:8s} median wall {res[name]['wall_s']:.2f} s, in-process {res[name]['inner_s']:.2f} s, "
                  f"peak RSS {res[name]['peak_rss_mb']:.0f} MB over {len(runs)} run(s)")
        z = "n/a"
        if mergekit_available(args.mergekit_python):
            cfg = work / "mergekit.yml"
            cfg.write_text(f"merge_method: nuslerp\nbase_model: {work / 'init'}\nmodels:\n"
                           f"  - model: {work / 'm1'}\n    parameters: {{weight: 0.5}}\n"
                           f"  - model: {work / 'm2'}\n    parameters: {{weight: 0.5}}\n"
                           f"dtype: {'bfloat16' if args.dtype == 'bf16' else 'float32'}\n")
            mk_bin = Path(args.mergekit_python).parent / "mergekit-yaml"
            cmd = ([str(mk_bin)] if mk_bin.exists() else [args.mergekit_python, "-m", "mergekit.scripts.run_yaml"])
            cmd += [str(cfg), str(work / "out_mergekit"), "--quiet", "-j", str(args.threads)]
            wall, rss, rc, out = run_measured(cmd, env, work / "mergekit.log")
            if rc != 0:
                print(f"mergekit failed (exit {rc}):\n{out[-2000:]}")
            else:
                res["mergekit"] = {"wall_s": wall, "peak_rss_mb": rss}
                print(f"mergekit wall {wall:7.2f} s                        peak RSS {rss:7.0f} MB", flush=True)
                z = f"{wall / res['ours']['wall_s']:.2f}"
                _compare(work)
        else:
            print(f"mergekit not importable by {args.mergekit_python}: Z unavailable")
        x = res["ours"]["inner_s"] / res["floor"]["inner_s"]
        print(f"floor peak RSS {res['floor']['peak_rss_mb']:.0f} MB; ours/floor peak = "
              f"{res['ours']['peak_rss_mb'] / res['floor']['peak_rss_mb']:.2f}")
        print(f"ratio_vs_copy={x:.2f} peak_rss_mb={res['ours']['peak_rss_mb']:.0f} ratio_vs_mergekit={z}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _compare(work: Path) -> None:
    """Sanity: our SLERP and mergekit's nuslerp agree on a few tensors (same formula, per tensor)."""
    from merge.checkpoint import Checkpoint

    ours, mk = Checkpoint(work / "out_ours"), Checkpoint(work / "out_mergekit")
    worst = 0.0
    for k in ours.keys()[:: max(1, len(ours.keys()) // 8)]:
        a, b = ours.get(k).float(), mk.get(k).float()
        worst = max(worst, ((a - b).norm() / a.norm()).item())
    print(f"ours vs mergekit: max relative difference over sampled tensors {worst:.2e}")


if __name__ == "__main__":
    main()

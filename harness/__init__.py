"""Evaluation harness for WARP runs. It reads a run directory's `manifest.json` and checkpoints
(never the RL loop's internals), scores every point of each iteration's LITI front and every saved
RL checkpoint for KL to the SFT policy, proxy and control reward, side-by-side preference against
baselines, and GSM8K/MATH through lm-eval; results are tidy pandas frames, cached per checkpoint
content, and rendered into `results/` reports (markdown tables, CSV, seaborn plots).
"""

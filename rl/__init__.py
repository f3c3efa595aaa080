"""RL core of WARP: offline model and data assets, prompt data, reward models (a learned reward
model, WARM weight-averaged reward models, a VADER control reward), REINFORCE/RLOO with a KL
penalty to an EMA or SFT anchor, one RL run, and the WARP loop (`rl.warp`, Algorithm 1) that
writes a run directory with `manifest.json` for the harness. Weight averaging comes from `merge`.
"""

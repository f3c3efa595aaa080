"""RL experiment configs: YAML validated into these dataclasses by `merge.config.load_config`.
Every default lives here, once; unknown keys and out-of-range values are ConfigErrors."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from merge.config import ConfigError

from .data import DataConfig


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass
class GenerationConfig:
    """How completions are sampled (training and the harness's evaluation alike)."""

    max_new_tokens: int = 16
    temperature: float = 0.9
    top_p: float = 1.0
    chat_template: bool = False

    def validate(self) -> None:
        _check(self.max_new_tokens >= 1, f"generation.max_new_tokens must be ≥ 1, got {self.max_new_tokens}")
        _check(self.temperature > 0, f"generation.temperature must be > 0, got {self.temperature}")
        _check(0 < self.top_p <= 1, f"generation.top_p must be in (0, 1], got {self.top_p}")


@dataclass
class LoraConfig:
    """Optional LoRA (peft); merged into dense weights (ΔW = B·A·scale) before any merge/save."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])

    def validate(self) -> None:
        _check(self.r >= 1, f"reinforce.lora.r must be ≥ 1, got {self.r}")


@dataclass
class ReinforceConfig:
    """REINFORCE with a KL anchor (paper Eq. 1–2): r_β = r − β·Σ log π_θ/π_anchor."""

    beta: float = 0.1
    anchor: Literal["ema", "sft"] = "ema"
    mu: float = 0.01
    baseline: Literal["none", "mean", "rloo"] = "mean"
    samples_per_prompt: int = 1           # k; RLOO needs k ≥ 2
    batch_prompts: int = 8
    lr: float = 5e-5
    warmup_steps: int = 5
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    unfinished_reward: Optional[float] = None   # replaces r for completions without EOS (seeds: −1)
    length_penalty: float = 0.0                 # r −= length_penalty · len (paper: 0.0005)
    lora: Optional[LoraConfig] = None

    def validate(self) -> None:
        _check(self.beta >= 0, f"reinforce.beta must be ≥ 0, got {self.beta}")
        _check(0 <= self.mu <= 1, f"reinforce.mu must be in [0, 1], got {self.mu}")
        _check(self.samples_per_prompt >= 1, f"reinforce.samples_per_prompt must be ≥ 1, got {self.samples_per_prompt}")
        _check(self.baseline != "rloo" or self.samples_per_prompt >= 2,
               f"reinforce.baseline 'rloo' needs samples_per_prompt ≥ 2, got {self.samples_per_prompt}")
        _check(self.batch_prompts >= 1, f"reinforce.batch_prompts must be ≥ 1, got {self.batch_prompts}")
        _check(0 < self.lr < 1, f"reinforce.lr must be in (0, 1), got {self.lr}")
        _check(self.warmup_steps >= 0, f"reinforce.warmup_steps must be ≥ 0, got {self.warmup_steps}")
        _check(self.weight_decay >= 0, f"reinforce.weight_decay must be ≥ 0, got {self.weight_decay}")
        _check(self.max_grad_norm > 0, f"reinforce.max_grad_norm must be > 0, got {self.max_grad_norm}")
        _check(self.length_penalty >= 0, f"reinforce.length_penalty must be ≥ 0, got {self.length_penalty}")


@dataclass
class WarpConfig:
    """Algorithm 1's outer loops: I iterations × M runs × T steps, SLERP (λ), LITI (η)."""

    iterations: int = 2
    runs: int = 2
    steps: int = 30
    lam: Optional[float] = None          # SLERP λ; None = 1/M (the paper's recursion for M > 2)
    eta: float = 0.3
    merge: bool = True                   # False: plain REINFORCE (needs runs = 1, iterations = 1)
    save_every: int = 0                  # intermediate `run` checkpoints every N steps (0: none)
    # dtype of those intermediate checkpoints (step_*), which only the harness reads: bfloat16 halves
    # their size. Finals, SLERP, LITI and SFT stay float32: they are merge inputs and the next
    # iteration's init, and bf16 rounding (2^-9 relative) is larger than small task vectors.
    storage_dtype: Literal["float32", "bfloat16"] = "float32"
    state_every: int = 10                # resumable training state every N steps

    def validate(self) -> None:
        _check(self.iterations >= 1, f"warp.iterations must be ≥ 1, got {self.iterations}")
        _check(self.runs >= 1, f"warp.runs must be ≥ 1, got {self.runs}")
        _check(self.steps >= 1, f"warp.steps must be ≥ 1, got {self.steps}")
        _check(self.lam is None or 0 <= self.lam <= 1, f"warp.lam must be in [0, 1], got {self.lam}")
        _check(self.lam is None or self.runs == 2, f"warp.lam applies to runs = 2 only (M > 2 uses λ = 1/m); got runs = {self.runs}")
        _check(0 <= self.eta <= 1, f"warp.eta must be in [0, 1], got {self.eta}")
        _check(self.save_every >= 0, f"warp.save_every must be ≥ 0, got {self.save_every}")
        _check(self.state_every >= 1, f"warp.state_every must be ≥ 1, got {self.state_every}")
        _check(not self.merge or self.runs >= 2, f"warp.merge needs runs ≥ 2 (SLERP of M task vectors); got runs = {self.runs}")
        _check(self.merge or (self.runs == 1 and self.iterations == 1),
               "warp.merge: false (plain REINFORCE) needs runs = 1 and iterations = 1")


@dataclass
class EngineConfig:
    """The sampling engine (rl.engine): vLLM where it can run, else transformers."""

    name: Literal["auto", "vllm", "hf"] = "auto"     # auto: vllm when installed and able to run the policy
    dtype: Literal["float32", "bfloat16"] = "float32"  # vLLM's weights; float32 keeps rollouts on-policy
    max_model_len: int = 2048                          # prompt + completion tokens per request (vLLM)
    kv_cache_gib: int = 1                              # CPU: VLLM_CPU_KVCACHE_SPACE, whole GiB (1 ≈ 23k tokens of SmolLM2)
    gpu_memory_utilization: float = 0.3                # CUDA: the colocated engine's share of GPU memory

    def validate(self) -> None:
        _check(self.max_model_len >= 16, f"engine.max_model_len must be ≥ 16, got {self.max_model_len}")
        _check(self.kv_cache_gib >= 1, f"engine.kv_cache_gib must be ≥ 1 (whole GiB), got {self.kv_cache_gib}")
        _check(0 < self.gpu_memory_utilization < 1,
               f"engine.gpu_memory_utilization must be in (0, 1), got {self.gpu_memory_utilization}")


@dataclass
class ExecutorConfig:
    """Where the M runs of an iteration run (rl.executor): here, one after the other, or as Ray tasks."""

    name: Literal["local", "ray"] = "local"
    ray_address: Optional[str] = None    # None: $RAY_ADDRESS, else a local Ray instance
    local_cpus: Optional[int] = None     # CPUs of a local Ray instance (None: all of this machine's)
    num_cpus: float = 1.0                # per run (also its torch thread count)
    num_gpus: float = 0.0                # per run
    memory_gb: Optional[float] = None    # per run, for Ray's scheduler
    max_retries: int = 3                 # a run whose worker died is retried and resumes from its state

    def validate(self) -> None:
        _check(self.num_cpus > 0, f"executor.num_cpus must be > 0, got {self.num_cpus}")
        _check(self.num_gpus >= 0, f"executor.num_gpus must be ≥ 0, got {self.num_gpus}")
        _check(self.max_retries >= 0, f"executor.max_retries must be ≥ 0, got {self.max_retries}")
        _check(self.local_cpus is None or self.local_cpus >= 1, f"executor.local_cpus must be ≥ 1, got {self.local_cpus}")
        _check(self.memory_gb is None or self.memory_gb > 0, f"executor.memory_gb must be > 0, got {self.memory_gb}")


@dataclass
class RLConfig:
    """One WARP experiment (or a plain REINFORCE baseline)."""

    policy: str = "smollm2-135m-instruct"
    reward_model: str = "rm:tweets-minilm"   # rm:<name> (trained once, cached) | dir | hub id | vader
    reward_with_prompt: bool = False
    control_reward: str = "vader"
    data: DataConfig = field(default_factory=DataConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    reinforce: ReinforceConfig = field(default_factory=ReinforceConfig)
    warp: WarpConfig = field(default_factory=WarpConfig)
    trainer: Literal["native", "trl"] = "native"   # one RL run: rl.run.train_run, or TRL's RLOOTrainer (rl.trl_backend)
    accelerate_config: Optional[str] = None        # trainer trl: launch each run with `accelerate launch` and this config
    engine: EngineConfig = field(default_factory=EngineConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    eval_prompts: int = 32                 # prompts written to prompts/{validation,test}.jsonl
    kl_sft_every: int = 1                  # the kl_sft metric (one π_sft log-prob pass) every N steps; 0: never
    seed: int = 0
    dtype: Literal["float32", "bfloat16"] = "float32"   # compute dtype of the forward passes (bf16: autocast);
                                           # parameters, Adam state and the EMA anchor are always float32
    device: str = "auto"                   # auto: cuda if available, else cpu
    threads: Optional[int] = None          # torch CPU threads (None: leave torch's default)

    def validate(self) -> None:
        _check(self.eval_prompts >= 1, f"eval_prompts must be ≥ 1, got {self.eval_prompts}")
        _check(self.kl_sft_every >= 0, f"kl_sft_every must be ≥ 0, got {self.kl_sft_every}")
        _check(self.threads is None or self.threads >= 1, f"threads must be ≥ 1, got {self.threads}")


# Keys that do not change the weights a run produces (how it runs, not what it computes): a run
# directory may be resumed with other values for them. Everything else must match to resume.
RUNTIME_KEYS = ("threads", "device", "warp.state_every", "engine.max_model_len", "engine.kv_cache_gib",
                "engine.gpu_memory_utilization", "executor")


def without_runtime_keys(config: dict) -> dict:
    """A plain config mapping with RUNTIME_KEYS removed (what must match to resume a run directory)."""
    import copy

    out = copy.deepcopy(config)
    for dotted in RUNTIME_KEYS:
        *parents, leaf = dotted.split(".")
        d = out
        for p in parents:
            d = d.get(p) if isinstance(d, dict) else None
        if isinstance(d, dict):
            d.pop(leaf, None)
    return out

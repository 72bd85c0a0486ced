"""The trainer's configuration: one frozen value, composed of the optimizer's and the loss's."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from jax.sharding import Mesh

from rl_jax.grpo import LossConfig
from rl_jax.sharding import (
    DEFAULT_RULES,
    LogicalRules,
    mesh_from_shape,
    parse_mesh_shape,
    parse_rule_overrides,
    with_overrides,
)
from rl_jax.train.batch import DEFAULT_LENGTH_BUCKETS
from rl_jax.train.optimizer import OptimizerConfig
from rl_jax.train.tree_batch import DEFAULT_MIN_SAVING

if TYPE_CHECKING:  # only read, never built, here: the trainer does not depend on the sampler at run time
    from rl_jax.sampling import SamplingConfig


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How one GRPO update is computed, laid out and saved.

    ``micro_batches`` splits each batch for gradient accumulation; the update equals the one-batch update
    (token means are exact: numerators are summed and divided by the batch's total denominator once, and
    adaptive clip bounds are searched on the whole batch first).

    Layout: ``mesh`` is ``"DATAxMODEL"`` (the data axis also shards the weights: FSDP) or
    ``"DATAxFSDPxMODEL"``; ``sharding_rules`` changes entries of ``rl_jax.sharding.DEFAULT_RULES`` for this
    experiment, each ``"LOGICAL=MESH_AXIS[+MESH_AXIS]"`` or ``"LOGICAL=none"`` (replicated), e.g.
    ``("kv_heads=none",)`` for a model with fewer KV heads than the model axis has devices. Enter them with
    ``rl_jax.sharding.axis_rules(cfg.logical_rules)`` around building the model, the sampler and the step.
    """

    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    micro_batches: int = 1
    # the sampler's temperature: log-probs are of the tempered policy. It must equal SamplingConfig's (same
    # default, 1.0); ``check_sampling_matches`` refuses a pair that differs.
    temperature: float = 1.0
    logprob_chunk: int = 256  # sequence positions per vocabulary-projection chunk (memory vs. speed)
    log_entropy: bool = True  # compute per-token entropy for the metrics (one more pass over each chunk)
    mesh: str = "1x1"
    sharding_rules: tuple[str, ...] = ()
    length_buckets: tuple[int, ...] = DEFAULT_LENGTH_BUCKETS
    # lay each batch out as a prefix tree (``rl_jax.train.tree_batch``): the prompt its rows share and each
    # group's request computed once, forward and backward, when that saves >= prefix_tree_min_saving of the
    # token positions (otherwise plain rows). Every micro-batch computes the shared segments again: with the
    # tree, rows are short, so use few micro-batches.
    prefix_tree: bool = True
    prefix_tree_min_saving: float = DEFAULT_MIN_SAVING
    # within the tree, pack rows of unequal length end to end in lanes when that computes fewer positions
    # than padding each to the longest (``rl_jax.train.tree_batch``)
    prefix_tree_pack: bool = True
    seed: int = 0
    checkpoint_dir: str | None = None
    keep_checkpoints: int = 3
    checkpoint_every: int = 1
    async_checkpointing: bool = True

    def __post_init__(self) -> None:
        if self.micro_batches < 1:
            raise ValueError(f"micro_batches must be >= 1; got {self.micro_batches}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0; got {self.temperature}")
        if self.logprob_chunk < 1:
            raise ValueError(f"logprob_chunk must be >= 1; got {self.logprob_chunk}")
        if self.keep_checkpoints < 1 or self.checkpoint_every < 1:
            raise ValueError("keep_checkpoints and checkpoint_every must be >= 1")
        if not self.length_buckets or min(self.length_buckets) < 2:
            raise ValueError(f"length_buckets must be non-empty sizes >= 2; got {self.length_buckets}")
        if not 0 <= self.prefix_tree_min_saving < 1:
            raise ValueError(f"prefix_tree_min_saving must lie in [0, 1); got {self.prefix_tree_min_saving}")
        parse_mesh_shape(self.mesh)
        parse_rule_overrides(self.sharding_rules)

    @property
    def mesh_shape(self) -> tuple[int, ...]:
        """``(data, model)`` or ``(data, fsdp, model)``, as ``mesh`` names them."""
        return parse_mesh_shape(self.mesh)

    @property
    def logical_rules(self) -> LogicalRules:
        """The default logical-axis rules with this experiment's ``sharding_rules`` applied."""
        return with_overrides(DEFAULT_RULES, parse_rule_overrides(self.sharding_rules))

    def make_mesh(self) -> Mesh:
        """The mesh ``--mesh DxM`` or ``DxFxM`` names, over all processes' devices."""
        return mesh_from_shape(self.mesh_shape)


def check_sampling_matches(sampling: SamplingConfig, train: TrainConfig) -> None:
    """Raise ``ValueError`` unless the rollouts ``sampling`` draws can be trained on by ``train``.

    The importance ratio ``exp(logp - old_logp)`` compares the trainer's log-probs with the sampler's; both
    are of ``softmax(logits / temperature)``, each at its own config's temperature. If the two temperatures
    differ the ratio is far from 1 before any update (0.7 against 1.0 gave ratios of 0.69-1.63 at step 0),
    so clipping and the surrogate act on a mismatch, not on policy change. Greedy sampling (temperature 0)
    draws argmax tokens while reporting temperature-1 log-probs: no temperature makes those ratios mean
    anything, so it is refused too. Call once where both configs are built, before the first rollout.
    """
    if sampling.temperature == 0.0:
        raise ValueError(
            "greedy sampling (SamplingConfig.temperature == 0) cannot be trained on: its tokens are argmax "
            "picks, not draws from the policy whose log-probs it reports, so the importance ratios are "
            f"meaningless; sample at the trainer's temperature ({train.temperature}) instead"
        )
    if sampling.temperature != train.temperature:
        raise ValueError(
            f"the sampler's temperature ({sampling.temperature}) differs from the trainer's "
            f"({train.temperature}): the trainer would score the rollouts under another policy than the one "
            "that drew them and the importance ratios would be off before any update; set both from one value"
        )

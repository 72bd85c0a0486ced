"""The trainer's configuration: one frozen value, composed of the optimizer's and the loss's."""

from __future__ import annotations

import dataclasses

from jax.sharding import Mesh

from rl_jax.grpo import LossConfig
from rl_jax.sharding import make_mesh, parse_mesh_shape
from rl_jax.train.batch import DEFAULT_LENGTH_BUCKETS
from rl_jax.train.optimizer import OptimizerConfig


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How one GRPO update is computed, laid out and saved.

    ``micro_batches`` splits each batch for gradient accumulation; the update equals the one-batch update
    (token means are exact: numerators are summed and divided by the batch's total denominator once, and
    adaptive clip bounds are searched on the whole batch first). ``mesh`` is ``"DATAxMODEL"``.
    """

    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    micro_batches: int = 1
    temperature: float = 1.0  # the sampler's temperature: log-probs are of the tempered policy
    logprob_chunk: int = 256  # sequence positions per vocabulary-projection chunk (memory vs. speed)
    log_entropy: bool = True  # compute per-token entropy for the metrics (one more pass over each chunk)
    mesh: str = "1x1"
    length_buckets: tuple[int, ...] = DEFAULT_LENGTH_BUCKETS
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
        parse_mesh_shape(self.mesh)

    @property
    def mesh_shape(self) -> tuple[int, int]:
        return parse_mesh_shape(self.mesh)

    def make_mesh(self) -> Mesh:
        """The (data, model) mesh ``--mesh DxM`` names, over all processes' devices."""
        return make_mesh(*self.mesh_shape)

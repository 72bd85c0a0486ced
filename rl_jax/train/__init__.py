"""Training: the pure jitted GRPO step, its state and optimizer, mesh layout and orbax checkpoints.

    cfg = TrainConfig(..., mesh="2x4x4", sharding_rules=("kv_heads=none",))
    mesh = cfg.make_mesh()
    with axis_rules(cfg.logical_rules):                 # the experiment's layout, for params and activations
        model = shard_module(Transformer(model_cfg, rngs=nnx.Rngs(0)), mesh)
        graphdef, state, train_step = create_train_state(model, cfg, mesh=mesh)   # traces under those rules
    state, metrics = train_step(state, shard_batch(collate(...), mesh))   # or collate_tree(...): tree training
"""

from rl_jax.train.batch import (
    DEFAULT_LENGTH_BUCKETS,
    DEFAULT_WINDOW_BUCKETS,
    Batch,
    batch_shardings,
    bucket_length,
    collate,
    loss_window,
    shard_batch,
)
from rl_jax.train.checkpoint import Checkpointer, abstract_state
from rl_jax.train.config import TrainConfig, check_sampling_matches
from rl_jax.train.distributed import DistributedConfig, initialize_distributed
from rl_jax.train.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer
from rl_jax.train.state import (
    TrainState,
    init_train_state,
    place_state,
    split_model,
    state_shardings,
    tree_shardings,
)
from rl_jax.train.step import (
    build_step_fn,
    create_train_state,
    make_logprob_fn,
    make_loss_fn,
    make_train_step,
    next_token_logprobs,
    split_micro_batches,
    token_logprobs,
    with_shared,
)
from rl_jax.train.tree_batch import TreeShape, collate_tree, saves_enough, tree_shape

__all__ = [
    "DEFAULT_LENGTH_BUCKETS",
    "DEFAULT_WINDOW_BUCKETS",
    "Batch",
    "Checkpointer",
    "DistributedConfig",
    "OptimizerConfig",
    "TrainConfig",
    "TrainState",
    "TreeShape",
    "abstract_state",
    "batch_shardings",
    "bucket_length",
    "build_step_fn",
    "check_sampling_matches",
    "collate",
    "collate_tree",
    "create_train_state",
    "init_train_state",
    "initialize_distributed",
    "learning_rate_schedule",
    "loss_window",
    "make_logprob_fn",
    "make_loss_fn",
    "make_optimizer",
    "make_train_step",
    "next_token_logprobs",
    "place_state",
    "saves_enough",
    "shard_batch",
    "split_micro_batches",
    "split_model",
    "state_shardings",
    "token_logprobs",
    "tree_shape",
    "tree_shardings",
    "with_shared",
]

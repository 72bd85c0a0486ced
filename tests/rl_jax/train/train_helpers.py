"""Shared pieces of the trainer tests: a tiny real Transformer, deterministic batches, and a command-line
entry point for the tests that need their own process (32 fake devices; kill -9 and resume).

    python train_helpers.py sharded OUT_DIR            # one step on 1 device and on an 8x4 mesh
    python train_helpers.py train CKPT_DIR OUT.npz --steps 4 [--hang-after 2] [--resume]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

TINY = dict(
    family="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4,
    num_kv_heads=4, head_dim=8, tie_word_embeddings=True, max_position_embeddings=128,
)
BATCH_ROWS = 16
LENGTH_BUCKETS = (32,)


def tiny_model(seed: int = 0):
    from flax import nnx

    from rl_jax.models import ModelConfig, Transformer

    return Transformer(ModelConfig(**TINY), rngs=nnx.Rngs(seed))


def random_batch(position: int, rows: int = BATCH_ROWS, *, nan_row: bool = False):
    """The batch at data position ``position``: variable-length trajectories with prompt and tool-output
    tokens masked out, sampler log-probs near the policy's and group advantages of mixed sign."""
    from rl_jax.train import collate

    rng = np.random.default_rng(1000 + position)
    tokens, masks, olds = [], [], []
    for _ in range(rows):
        n = int(rng.integers(12, 31))
        tokens.append(rng.integers(1, TINY["vocab_size"], size=n).tolist())
        mask = np.ones(n, np.float32)
        mask[: int(rng.integers(2, 6))] = 0.0  # the prompt
        tool = int(rng.integers(6, n - 2))
        mask[tool : tool + 2] = 0.0  # a tool output in the middle of the episode
        masks.append(mask.tolist())
        # log-probs of a near-uniform policy over 64 tokens, perturbed: ratios spread around 1
        olds.append((np.log(1 / 64) + rng.normal(0, 0.3, size=n)).tolist())
    adv = rng.normal(size=rows).astype(np.float32)
    if nan_row:
        adv[3] = np.nan
    return collate(tokens, masks, olds, adv.tolist(), buckets=LENGTH_BUCKETS)


def state_arrays(state) -> dict[str, np.ndarray]:
    """Every array of a TrainState, flattened by key path (for bitwise comparisons across processes)."""
    import jax

    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    return {jax.tree_util.keystr(path): np.asarray(jax.device_get(x)) for path, x in leaves}


def train_config(**overrides):
    from rl_jax.train import OptimizerConfig, TrainConfig

    base = dict(
        optimizer=OptimizerConfig(learning_rate=1e-3, total_steps=10, weight_decay=0.01),
        logprob_chunk=16,
    )
    base.update(overrides)
    return TrainConfig(**base)


# ----------------------------------------------------------------------------------------- subprocess modes


def _sharded(out_dir: Path) -> None:
    """One step on a single device and on an 8x4 mesh; save both states and metrics."""
    import jax

    from rl_jax.sharding import make_mesh
    from rl_jax.train import create_train_state, shard_batch

    assert jax.device_count() == 32, jax.device_count()
    cfg = train_config()
    batch = random_batch(0)
    results = {}
    for name, mesh in (("single", make_mesh(1, 1)), ("mesh8x4", make_mesh(8, 4))):
        _, state, step = create_train_state(tiny_model(), cfg, mesh)
        state, metrics = step(state, shard_batch(batch, mesh))
        if name == "mesh8x4":
            wq = state.params["layers"][0]["wq"].get_value()
            assert len(wq.sharding.device_set) == 32 and not wq.sharding.is_fully_replicated, wq.sharding
        results[name] = state
        np.savez(out_dir / f"{name}_metrics.npz", **{k: np.asarray(v) for k, v in metrics.items()})
        np.savez(out_dir / f"{name}_state.npz", **state_arrays(state))
    print("OK", flush=True)


def _train(ckpt_dir: Path, out: Path, steps: int, hang_after: int | None, resume: bool) -> None:
    """Train to ``steps`` total steps, checkpointing every step; optionally resume first, or hang (to be
    killed) once the checkpoint of step ``hang_after`` is committed."""
    import jax

    from rl_jax.train import Checkpointer, create_train_state

    cfg = train_config(checkpoint_dir=str(ckpt_dir))
    _, state, step = create_train_state(tiny_model(), cfg)
    with Checkpointer(ckpt_dir, keep=cfg.keep_checkpoints, async_save=cfg.async_checkpointing) as ckpt:
        position = 0
        if resume:
            state, meta = ckpt.restore(state)
            position = int(meta["data_position"]["batch"])
            print(f"RESTORED {int(state.step)} position={position}", flush=True)
        while int(state.step) < steps:
            state, _ = step(state, jax.tree.map(np.asarray, random_batch(position)))
            position += 1
            ckpt.save(state, data_position={"batch": position}, config=cfg)
            if hang_after is not None and int(state.step) == hang_after:
                ckpt.wait()
                print(f"COMMITTED {hang_after}", flush=True)
                time.sleep(600)  # the test kills us here with SIGKILL
        ckpt.wait()
    np.savez(out, **state_arrays(state))
    print("DONE", flush=True)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("sharded")
    p.add_argument("out_dir", type=Path)
    t = sub.add_parser("train")
    t.add_argument("ckpt_dir", type=Path)
    t.add_argument("out", type=Path)
    t.add_argument("--steps", type=int, required=True)
    t.add_argument("--hang-after", type=int)
    t.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    if args.mode == "sharded":
        _sharded(args.out_dir)
    else:
        _train(args.ckpt_dir, args.out, args.steps, args.hang_after, args.resume)


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    main(sys.argv[1:])

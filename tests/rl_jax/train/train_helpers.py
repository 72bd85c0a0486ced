"""Shared pieces of the trainer tests: a tiny real Transformer, deterministic batches, and a command-line
entry point for the tests that need their own process (32 fake devices; kill -9 and resume).

    python train_helpers.py sharded OUT_DIR            # one step on 1 device and on an 8x4 mesh
    python train_helpers.py multiprocess OUT_DIR       # one process of a jax.distributed group (RL_JAX_* env)
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
# sampled by the multi-process test in every process and compared with one process's result
SAMPLE_PROMPTS = [[3, 14, 15, 9, 26], [35, 8], list(range(40, 52))]
SAMPLE_KEY = 3


def sample_config():
    from rl_jax.sampling import SamplingConfig

    return SamplingConfig(temperature=0.8, top_k=40, top_p=0.95, max_new_tokens=6)


def tiny_model(seed: int = 0):
    from flax import nnx

    from rl_jax.models import ModelConfig, Transformer

    return Transformer(ModelConfig(**TINY), rngs=nnx.Rngs(seed))


def random_trajectories(position: int, rows: int = BATCH_ROWS):
    """``(tokens, loss_masks, old_logps, advantages)`` lists of ``random_batch(position, rows)``, uncollated."""
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
    return tokens, masks, olds, rng.normal(size=rows).astype(np.float32).tolist()


def random_batch(position: int, rows: int = BATCH_ROWS, *, nan_row: bool = False):
    """The batch at data position ``position``: variable-length trajectories with prompt and tool-output
    tokens masked out, sampler log-probs near the policy's and group advantages of mixed sign."""
    from rl_jax.train import collate

    tokens, masks, olds, adv = random_trajectories(position, rows)
    if nan_row:
        adv[3] = float("nan")
    # loss windows in eighths of T: 28 of 32 positions, so every trainer test runs the windowed step
    return collate(tokens, masks, olds, adv, buckets=LENGTH_BUCKETS, window_buckets=8)


def state_arrays(state) -> dict[str, np.ndarray]:
    """Every array of a TrainState, flattened by key path (for bitwise comparisons across processes)."""
    import jax

    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    return {jax.tree_util.keystr(path): np.asarray(jax.device_get(x)) for path, x in leaves}


def assert_same_step(got_state: dict, got_metrics: dict, want_state: dict, want_metrics: dict, lr: float) -> None:
    """Two runs of one train step from the same state agree, within f32 rounding (``state_arrays`` dicts).

    Params alone would hardly tell: a first Adam step moves every weight by about ``lr * sign(g)`` whatever
    the gradient's scale. So the loss, the gradient norm and the optimizer's moments (after one step the
    clipped gradient and its square, times constants) are compared too, each leaf to 1e-5 of its largest
    entry; params to 1e-2 of the learning rate (weights whose gradient is near Adam's eps move by a
    rounding-sensitive fraction of lr). Every metric must agree, whatever the number of micro-batches or
    devices each run used (``loss_tokens`` is the batch's total, not a per-micro-batch figure).
    """
    np.testing.assert_allclose(got_metrics["loss"], want_metrics["loss"], rtol=1e-5)
    np.testing.assert_allclose(got_metrics["grad_norm"], want_metrics["grad_norm"], rtol=1e-5)
    assert set(got_metrics) == set(want_metrics)
    for key, want in want_metrics.items():
        np.testing.assert_allclose(got_metrics[key], want, rtol=1e-5, atol=1e-7, err_msg=key)
    assert set(got_state) == set(want_state)
    for key, want in want_state.items():
        got = got_state[key]
        assert got.shape == want.shape and got.dtype == want.dtype, key
        if not np.issubdtype(want.dtype, np.floating):
            np.testing.assert_array_equal(got, want, err_msg=key)
        elif key.startswith(".params"):
            np.testing.assert_allclose(got, want, atol=1e-2 * lr, rtol=0, err_msg=key)
        else:
            scale = float(np.max(np.abs(want))) if want.size else 0.0
            np.testing.assert_allclose(got, want, atol=1e-5 * scale, rtol=0, err_msg=key)


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


def _multiprocess(out_dir: Path, deadline_s: float) -> None:
    """One of two processes (4 CPU devices each) running one train step and one sampling call on a global
    4x2 mesh; writes what it computed, gathered to the global arrays, as ``proc{i}_*.npz``."""
    import threading

    start = time.perf_counter()

    def stage(name: str) -> None:  # progress with timings, for the test's failure message
        print(f"{name} {time.perf_counter() - start:.1f}s", flush=True)

    # if a peer dies or the coordinator hangs, do not outlive the test: exit on our own deadline
    watchdog = threading.Timer(deadline_s, lambda: os._exit(3))
    watchdog.daemon = True
    watchdog.start()

    from rl_jax.train import initialize_distributed

    # first, before anything touches a device: the settings come from RL_JAX_COORDINATOR & co.
    dist = initialize_distributed(initialization_timeout=int(deadline_s))

    import jax
    from jax.experimental import multihost_utils

    from rl_jax.sampling import Sampler
    from rl_jax.sharding import make_mesh, shard_module
    from rl_jax.train import create_train_state, shard_batch

    stage("joined")
    assert dist.is_multi_process and jax.process_count() == 2, (dist, jax.process_count())
    assert jax.local_device_count() == 4 and jax.device_count() == 8
    me = jax.process_index()

    # the devices interleaved across the processes: a mesh that followed this order would pair devices of
    # different hosts on the model axis; make_mesh must keep each model row within one process
    by_process = [[d for d in jax.devices() if d.process_index == p] for p in range(2)]
    interleaved = [d for pair in zip(*by_process, strict=True) for d in pair]
    mesh = make_mesh(4, 2, interleaved)
    layout = [[d.process_index for d in row] for row in mesh.devices]
    assert layout == [[0, 0], [0, 0], [1, 1], [1, 1]], layout
    try:  # 3 data rows cannot split over 2 hosts without a model row spanning both
        make_mesh(3, 2)
    except ValueError as exc:
        assert "multiple of the number of processes" in str(exc), exc
    else:
        raise AssertionError("make_mesh(3, 2) over 2 processes should be refused")

    # one train step: each process feeds only its own rows (process order = global row order)
    cfg = train_config()
    batch = random_batch(0)
    rows = BATCH_ROWS // 2
    local = jax.tree.map(lambda x: x[me * rows : (me + 1) * rows], batch)
    _, state, step = create_train_state(tiny_model(), cfg, mesh)
    stage("state")
    state, metrics = step(state, shard_batch(local, mesh))
    stage("step")
    wq = state.params["layers"][0]["wq"].get_value()
    assert not wq.is_fully_addressable and not wq.sharding.is_fully_replicated, wq.sharding
    np.savez(out_dir / f"proc{me}_metrics.npz", **{k: np.asarray(v) for k, v in metrics.items()})
    gathered = multihost_utils.process_allgather(state, tiled=True)  # the global arrays, on every process
    np.savez(out_dir / f"proc{me}_state.npz", **state_arrays(gathered))
    stage("gathered")

    # one sampling call: every process passes the same prompts and key and gets every row back
    sampler = Sampler(shard_module(tiny_model(), mesh), mesh=mesh)
    out = sampler.generate(SAMPLE_PROMPTS, sample_config(), jax.random.key(SAMPLE_KEY))
    np.savez(out_dir / f"proc{me}_sample.npz", tokens=out.tokens, logprobs=out.logprobs, lengths=out.lengths)
    stage("sampled")
    # leave together: process 0 hosts the coordinator, which must outlive the others' last collective
    jax.distributed.shutdown()
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
    m = sub.add_parser("multiprocess")
    m.add_argument("out_dir", type=Path)
    m.add_argument("--deadline", type=float, default=240.0)
    t = sub.add_parser("train")
    t.add_argument("ckpt_dir", type=Path)
    t.add_argument("out", type=Path)
    t.add_argument("--steps", type=int, required=True)
    t.add_argument("--hang-after", type=int)
    t.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    if args.mode == "sharded":
        _sharded(args.out_dir)
    elif args.mode == "multiprocess":
        _multiprocess(args.out_dir, args.deadline)
    else:
        _train(args.ckpt_dir, args.out, args.steps, args.hang_after, args.resume)


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    main(sys.argv[1:])

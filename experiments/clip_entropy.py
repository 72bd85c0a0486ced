"""Does adaptive clipping (BAPO) keep policy entropy from collapsing where a fixed narrow clip does not?

A small, fully synthetic GRPO experiment in pure JAX, built from ``rl_jax.grpo``'s functions:

Task (verifiable, variable length, like agent episodes whose failures run long): for prompt ``p`` the policy
must emit exactly ``n_p`` tokens (2..6), each from a prompt- and position-specific set of 4 allowed tokens out
of 15, then EOS. Reward 1 for an exact answer, else 0.5 * (correct prefix length / n_p). Many answers are
correct (4^n_p per prompt), so a healthy policy can keep entropy high while solving the task; collapsing
onto one answer is the over-exploitation the BAPO paper describes. Failed sequences are longer than
successful ones, so negative-advantage tokens outnumber positive ones, the imbalance adaptive clipping targets.

Policy: a table of logits ``[prompt, position, vocab]`` (each position sampled independently given the
prompt). Training is off-policy the usual way: each rollout batch is used for ``epochs x minibatches`` Adam
updates, so later updates see ratios away from 1 and the clip bounds matter.

Arms: ``ppo`` (fixed [0.8, 1.2]), ``bapo`` (adaptive, the project default, surrogate contributions), and
``bapo-gradient`` (adaptive, contributions counted on tokens that keep gradient). Same seeds, same rollouts
at step 0.

    .venv/bin/python experiments/clip_entropy.py --steps 200 --seeds 3 --out runs/clip_entropy

writes ``curves.csv`` (one row per arm, seed and step) and ``summary.json``, and prints one JSON line with
the summary. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rl_jax.grpo import (
    AdvantageConfig,
    BapoConfig,
    ClipConfig,
    LossConfig,
    group_advantages,
    mean_loss,
    policy_loss,
    summarize,
    token_logprobs_from_logits,
)

EOS = 0


@dataclass(frozen=True)
class TaskConfig:
    num_prompts: int = 64
    vocab: int = 16          # token 0 is EOS
    max_len: int = 12
    allowed: int = 4         # allowed tokens per (prompt, position)
    min_target: int = 2
    max_target: int = 6
    seed: int = 1234         # the task is the same for every arm and seed


@dataclass(frozen=True)
class RunConfig:
    arm: str = "bapo"
    steps: int = 200
    prompts_per_step: int = 16
    group_size: int = 8
    epochs: int = 2
    minibatches: int = 4
    lr: float = 0.1
    staleness: int = 0       # train on rollouts sampled this many steps ago (replay / asynchronous RL)
    seed: int = 0
    task: TaskConfig = field(default_factory=TaskConfig)


ARMS: dict[str, ClipConfig] = {
    "ppo": ClipConfig(rule="ppo", eps_low=0.2),
    "bapo": ClipConfig(rule="bapo"),
    "bapo-gradient": ClipConfig(rule="bapo", bapo=BapoConfig(contribution="gradient")),
}


def make_task(cfg: TaskConfig) -> tuple[jnp.ndarray, jnp.ndarray]:
    """allowed [P, L, V] bool (never EOS), targets [P] int."""
    rng = np.random.default_rng(cfg.seed)
    allowed = np.zeros((cfg.num_prompts, cfg.max_len, cfg.vocab), bool)
    for p in range(cfg.num_prompts):
        for pos in range(cfg.max_len):
            allowed[p, pos, 1 + rng.choice(cfg.vocab - 1, cfg.allowed, replace=False)] = True
    targets = rng.integers(cfg.min_target, cfg.max_target + 1, cfg.num_prompts)
    return jnp.asarray(allowed), jnp.asarray(targets, jnp.int32)


def score(tokens: jnp.ndarray, prompts: jnp.ndarray, allowed: jnp.ndarray, targets: jnp.ndarray):
    """tokens [B, L] -> (reward [B], success [B], loss mask [B, L]: tokens up to and including the first EOS)."""
    b, length = tokens.shape
    pos = jnp.arange(length)
    is_eos = tokens == EOS
    first_eos = jnp.where(is_eos.any(-1), jnp.argmax(is_eos, -1), length)
    mask = pos[None] <= first_eos[:, None]
    ok = jnp.take_along_axis(allowed[prompts], tokens[..., None], -1)[..., 0]      # [B, L]
    prefix = jnp.argmin(jnp.concatenate([ok, jnp.zeros((b, 1), bool)], -1), -1)  # leading correct tokens
    n = targets[prompts]
    success = (prefix >= n) & (first_eos == n)
    reward = jnp.where(success, 1.0, 0.5 * jnp.minimum(prefix, n) / n)
    return reward, success, mask


def make_run(cfg: RunConfig):
    clip = ARMS[cfg.arm]
    loss_cfg = LossConfig(clip=clip, aggregation="token-mean")
    allowed, targets = make_task(cfg.task)
    opt = optax.adam(cfg.lr)
    batch = cfg.prompts_per_step * cfg.group_size
    if batch % cfg.minibatches:
        raise ValueError("prompts_per_step * group_size must divide into minibatches")

    def loss_fn(params, mb):
        logits = params[mb["prompts"]]
        out = token_logprobs_from_logits(logits, mb["tokens"], with_entropy=True)
        terms = policy_loss(out.logp, mb["old_logp"], mb["adv"], mb["mask"], loss_cfg, entropy=out.entropy)
        return mean_loss(terms), terms.metrics

    def sample(params, key):
        """One rollout batch from the behaviour policy ``params``, with its log-probs and advantages."""
        k_prompt, k_tok = jax.random.split(key)
        prompts = jax.random.choice(k_prompt, cfg.task.num_prompts, (cfg.prompts_per_step,), replace=False)
        prompts = jnp.repeat(prompts, cfg.group_size)
        logits = params[prompts]                                                  # [B, L, V]
        tokens = jax.random.categorical(k_tok, logits)
        reward, success, mask = score(tokens, prompts, allowed, targets)
        rollout = token_logprobs_from_logits(logits, tokens, with_entropy=True)
        adv = group_advantages(reward.reshape(cfg.prompts_per_step, cfg.group_size), cfg=AdvantageConfig("grpo"))
        data = {"prompts": prompts, "tokens": tokens, "old_logp": rollout.logp, "adv": adv.reshape(-1), "mask": mask}
        return data, reward, success, rollout.entropy

    def step(carry, key):
        params, opt_state, queue = carry
        k_sample, k_perm = jax.random.split(key)
        fresh, reward, success, entropy = sample(params, k_sample)
        # the batch trained on now was sampled `staleness` steps ago; the fresh one waits in the queue
        queue = jax.tree.map(lambda q, x: jnp.concatenate([q, x[None]]), queue, fresh)
        data = jax.tree.map(lambda q: q[0], queue)
        queue = jax.tree.map(lambda q: q[1:], queue)
        prompts, mask, adv = fresh["prompts"], fresh["mask"], fresh["adv"]

        def update(carry, perm):
            params, opt_state = carry
            mb = jax.tree.map(lambda x: x[perm], data)
            (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, mb)
            updates, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), summarize(metrics)

        perms = jnp.stack([
            jax.random.permutation(k, batch).reshape(cfg.minibatches, -1)
            for k in jax.random.split(k_perm, cfg.epochs)
        ]).reshape(cfg.epochs * cfg.minibatches, -1)
        (params, opt_state), upd = jax.lax.scan(update, (params, opt_state), perms)
        maskf = mask.astype(jnp.float32)
        answer = (jnp.arange(cfg.task.max_len)[None] < targets[prompts][:, None]).astype(jnp.float32)
        record = {
            "reward": reward.mean(),
            "success": success.mean(),
            "entropy": jnp.sum(entropy * maskf) / maskf.sum(),   # of the current policy, on its own samples
            # entropy where 4 answers are all correct (positions < n_p): its optimum is log 4, not 0, so a fall
            # here is over-exploitation, not learning
            "answer_entropy": jnp.sum(entropy * answer) / answer.sum(),
            "length": maskf.sum(-1).mean(),
            "pos_token_frac": jnp.sum((adv.reshape(-1, 1) > 0) * maskf) / maskf.sum(),
            # over the update minibatches: mean bounds and clip fractions, median P/N (inf when a minibatch has no
            # negative-advantage token)
            "clip_low": upd["clip_low"].mean(),
            "clip_high": upd["clip_high"].mean(),
            "pos_neg_ratio": jnp.median(upd["pos_neg_ratio"]),
            "clip_frac_high": upd["clip_frac_high"].mean(),
            "clip_frac_low": upd["clip_frac_low"].mean(),
            "approx_kl": upd["approx_kl"].mean(),
        }
        return (params, opt_state, queue), record

    @jax.jit
    def run(key):
        params = jnp.zeros((cfg.task.num_prompts, cfg.task.max_len, cfg.task.vocab), jnp.float32)
        k_fill, k_run = jax.random.split(key)
        # a queue of `staleness` batches, filled from the initial policy
        queue = jax.vmap(lambda k: sample(params, k)[0])(jax.random.split(k_fill, cfg.staleness))
        carry = (params, opt.init(params), queue)
        _, records = jax.lax.scan(step, carry, jax.random.split(k_run, cfg.steps))
        return records

    return run


def summarize_curves(curves: dict[str, np.ndarray], window: int) -> dict[str, float]:
    def tail(k: str) -> float:
        return float(np.mean(curves[k][-window:]))

    entropy = curves["entropy"]
    return {
        "entropy_start": float(entropy[0]),
        "entropy_final": tail("entropy"),
        "entropy_min": float(entropy.min()),
        "answer_entropy_final": tail("answer_entropy"),
        "reward_final": tail("reward"),
        "success_final": tail("success"),
        "steps_to_reward_0.8": int(np.argmax(curves["reward"] >= 0.8)) if (curves["reward"] >= 0.8).any() else -1,
        "clip_low_mean": float(curves["clip_low"].mean()),
        "clip_high_mean": float(curves["clip_high"].mean()),
        "pos_token_frac_start": float(curves["pos_token_frac"][:10].mean()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, from {sorted(ARMS)}")
    ap.add_argument("--lr", type=float, default=RunConfig.lr)
    ap.add_argument("--epochs", type=int, default=RunConfig.epochs)
    ap.add_argument("--staleness", type=int, default=RunConfig.staleness)
    ap.add_argument("--out", type=Path, default=Path("runs/clip_entropy"))
    args = ap.parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        ap.error(f"unknown arm(s) {unknown}; known: {sorted(ARMS)}")

    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    summary: dict[str, dict] = {}
    window = max(1, args.steps // 10)
    for arm in arms:
        per_seed = []
        for seed in range(args.seeds):
            cfg = RunConfig(
                arm=arm, steps=args.steps, seed=seed, lr=args.lr, epochs=args.epochs, staleness=args.staleness
            )
            t0 = time.perf_counter()
            records = jax.device_get(make_run(cfg)(jax.random.PRNGKey(seed)))
            curves = {k: np.asarray(v) for k, v in records.items()}
            per_seed.append(summarize_curves(curves, window))
            for i in range(args.steps):
                rows.append({"arm": arm, "seed": seed, "step": i, **{k: float(v[i]) for k, v in curves.items()}})
            print(f"[clip_entropy] {arm} seed {seed}: {time.perf_counter() - t0:.1f}s "
                  f"entropy {per_seed[-1]['entropy_start']:.2f} -> {per_seed[-1]['entropy_final']:.2f}, "
                  f"reward {per_seed[-1]['reward_final']:.2f}", file=sys.stderr)
        summary[arm] = {
            k: float(np.mean([s[k] for s in per_seed])) for k in per_seed[0]
        } | {"per_seed": per_seed}

    with open(args.out / "curves.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = {
        "experiment": "clip_entropy",
        "config": asdict(RunConfig(steps=args.steps, lr=args.lr, epochs=args.epochs, staleness=args.staleness)) | {"seeds": args.seeds},
        "summary": {a: {k: v for k, v in s.items() if k != "per_seed"} for a, s in summary.items()},
    }
    (args.out / "summary.json").write_text(json.dumps(result | {"per_seed": summary}, indent=2))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

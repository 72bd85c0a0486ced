"""Does adaptive clipping (BAPO) keep policy entropy from collapsing where a fixed narrow clip does not?

A small, fully synthetic GRPO experiment in pure JAX, built from ``rl_jax.grpo``'s functions.

Task (verifiable, variable length): for prompt ``p`` the policy must emit exactly ``n_p`` tokens (2..6), each
from a prompt- and position-specific set of 4 allowed tokens out of 15, then EOS. Reward 1 for an exact
answer, else 0.5 * (correct prefix length / n_p). Many answers are correct (4^n_p per prompt), so a healthy
policy can keep entropy high while solving the task (at the answer positions the optimum is log 4 = 1.39);
collapsing onto one answer is the over-exploitation the BAPO paper describes. Sequences run to the first EOS
or ``max_len``. Measured here, the positive and negative advantage mass per batch is nearly balanced
(token-weighted P / N at ratio 1 is about 0.7-1.1, below BAPO's rho_0 = 0.5 in about 1% of steps), also with
``--max-len 24 --cutoff-scores-zero`` (cut-off sequences score 0).

Policy: a table of logits ``[prompt, position, vocab]`` (each position sampled independently given the
prompt). Each rollout batch is used for ``epochs x minibatches`` updates, and with ``--staleness k`` the batch
trained on at step t was sampled at step t - k (asynchronous RL / replay): ratios are taken against the
log-probs of the policy that sampled the batch, so they move away from 1 and the clip bounds matter.

Optimizer: plain SGD on the logits by default. With Adam on a logit table every logit moves by about ``lr``
per update whatever the gradient's size, so zeroing the clipped tokens' gradient barely shrinks the update:
with the old defaults (Adam, lr 0.1, 2 epochs, on-policy) the fixed [0.8, 1.2] clip and the near-unclipped
[0.6, 3.0] gave the same entropy curve (final 0.36 vs 0.32), so no clip rule could be tested. (In an LLM,
Adam normalises gradients summed over many contexts, and the clip does bound each context's change.)
``--optimizer adam --lr 0.1`` still runs that setting.

Arms (same seeds, same rollouts at step 0): ``ppo`` fixed [0.8, 1.2]; ``bapo`` adaptive, the project default
(surrogate contributions, rho_0 0.5); ``bapo-gradient`` adaptive, contributions counted on tokens that keep
gradient; ``dapo`` fixed [0.8, 1.28]; controls ``fixed-0.6-1.2`` (BAPO's start bounds), ``fixed-0.9-3.0``
(BAPO's last candidate), ``wide`` [0.6, 3.0] (BAPO's outer limits: close to no clip), ``bapo-rho1`` (BAPO with
rho_0 = 1). Bounds are chosen per update minibatch, on that minibatch (as the authors' verl recipe does).

Entropy is reported two ways: ``entropy``, of the current policy at the positions its fresh samples visit
(up to and including the first EOS), and ``policy_answer_entropy``, of the whole table at every prompt's
answer positions. A clip that only slows learning also slows the entropy fall, so the summary also gives the
answer entropy when the 10-step mean reward first reaches 0.5 / 0.6 / 0.7 (entropy at matched reward).

    .venv/bin/python experiments/clip_entropy.py --out runs/clip_entropy

(defaults: 400 steps, 3 seeds, SGD lr 30, 4 epochs x 4 minibatches, staleness 4, every arm) writes
``curves.csv`` (one row per arm, seed and step) and ``summary.json`` (means over seeds, per-seed values),
and prints one JSON line with the summary. Progress goes to stderr.

Result (defaults, mean of 3 seeds; entropy 2.77 at the start in every arm; H@r: answer entropy at reward r):

    arm            bounds (mean)  entropy final  answer entropy final  reward final  H@0.5  H@0.7
    ppo            [0.80, 1.20]   1.05           0.54                  0.79          1.25   0.73
    bapo           [0.63, 1.39]   0.60           0.26                  0.88          1.11   0.55
    bapo-gradient  [0.65, 1.28]   0.67           0.28                  0.86          1.12   0.61
    dapo           [0.80, 1.28]   0.83           0.43                  0.85          1.24   0.77
    fixed-0.6-1.2  [0.60, 1.20]   0.59           0.26                  0.88          1.15   0.55
    fixed-0.9-3.0  [0.90, 3.00]   0.39           0.41                  0.96          1.20   0.82
    wide           [0.60, 3.00]   0.22           0.22                  0.98          1.05   0.61
    bapo-rho1      [0.74, 2.01]   0.38           0.32                  0.95          1.20   0.75

BAPO does not keep entropy up against the fixed clip here: at equal steps the fixed [0.8, 1.2] clip keeps the
most (it learns slowest), and at equal reward BAPO is at or below it. With batches this balanced BAPO sits at
its start bounds [0.6, 1.2] nearly always (it matches ``fixed-0.6-1.2``), looser than PPO's on the negative
side. The same ordering (ppo >= bapo at matched reward) held at SGD lr 10 and 100, on-policy (staleness 0,
2 epochs), and with ``--max-len 24 --cutoff-scores-zero``; under Adam all arms were within noise.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import asdict, dataclass, field, replace
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
    # True: a sequence cut off at max_len without EOS scores 0 (an agent episode stopped at its turn limit
    # earns nothing), so the longest sequences are failures and negative tokens outweigh positive ones
    cutoff_scores_zero: bool = False


@dataclass(frozen=True)
class RunConfig:
    arm: str = "bapo"
    steps: int = 400
    prompts_per_step: int = 16
    group_size: int = 8
    epochs: int = 4
    minibatches: int = 4
    lr: float = 30.0         # SGD on logits of a token-mean loss; Adam wants about 0.1
    staleness: int = 4       # train on rollouts sampled this many steps ago (replay / asynchronous RL)
    optimizer: str = "sgd"   # "sgd" | "adam": see the module docstring
    seed: int = 0
    task: TaskConfig = field(default_factory=TaskConfig)


ARMS: dict[str, ClipConfig] = {
    "ppo": ClipConfig(rule="ppo", eps_low=0.2),
    "bapo": ClipConfig(rule="bapo"),
    "bapo-gradient": ClipConfig(rule="bapo", bapo=BapoConfig(contribution="gradient")),
    "dapo": ClipConfig(rule="dapo"),
    "fixed-0.6-1.2": ClipConfig(rule="ppo", eps_low=0.4, eps_high=0.2),      # BAPO's start bounds, always
    "fixed-0.9-3.0": ClipConfig(rule="ppo", eps_low=0.1, eps_high=2.0),      # BAPO's last candidate, always
    "wide": ClipConfig(rule="ppo", eps_low=0.4, eps_high=2.0),               # [0.6, 3.0]: BAPO's outer limits
    "bapo-rho1": ClipConfig(rule="bapo", bapo=BapoConfig(rho0=1.0)),         # BAPO asking for P >= N
}

OPTIMIZERS = {"adam": optax.adam, "sgd": optax.sgd}
REWARD_LEVELS = (0.5, 0.6, 0.7)
SPREAD_KEYS = ("entropy_final", "policy_answer_entropy_final", "reward_final")  # also reported as std over seeds


def make_task(cfg: TaskConfig) -> tuple[jnp.ndarray, jnp.ndarray]:
    """allowed [P, L, V] bool (never EOS), targets [P] int."""
    rng = np.random.default_rng(cfg.seed)
    allowed = np.zeros((cfg.num_prompts, cfg.max_len, cfg.vocab), bool)
    for p in range(cfg.num_prompts):
        for pos in range(cfg.max_len):
            allowed[p, pos, 1 + rng.choice(cfg.vocab - 1, cfg.allowed, replace=False)] = True
    targets = rng.integers(cfg.min_target, cfg.max_target + 1, cfg.num_prompts)
    return jnp.asarray(allowed), jnp.asarray(targets, jnp.int32)


def score(
    tokens: jnp.ndarray, prompts: jnp.ndarray, allowed: jnp.ndarray, targets: jnp.ndarray,
    cutoff_scores_zero: bool = False,
):
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
    if cutoff_scores_zero:
        reward = jnp.where(is_eos.any(-1), reward, 0.0)
    return reward, success, mask


def make_run(cfg: RunConfig):
    clip = ARMS[cfg.arm]
    loss_cfg = LossConfig(clip=clip, aggregation="token-mean")
    allowed, targets = make_task(cfg.task)
    opt = OPTIMIZERS[cfg.optimizer](cfg.lr)
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
        reward, success, mask = score(tokens, prompts, allowed, targets, cfg.task.cutoff_scores_zero)
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
        # the whole table after the update, every prompt (not only those sampled): mean entropy over the answer
        # positions, whose optimum is log 4
        logp_all = jax.nn.log_softmax(params, -1)
        ent_all = -jnp.sum(jnp.exp(logp_all) * logp_all, -1)                          # [P, L]
        answer_all = jnp.arange(cfg.task.max_len)[None] < targets[:, None]
        answer = (jnp.arange(cfg.task.max_len)[None] < targets[prompts][:, None]).astype(jnp.float32)
        record = {
            "reward": reward.mean(),
            "success": success.mean(),
            "entropy": jnp.sum(entropy * maskf) / maskf.sum(),   # of the current policy, on its own samples
            # entropy where 4 answers are all correct (positions < n_p): its optimum is log 4, not 0, so a fall
            # here is over-exploitation, not learning
            "answer_entropy": jnp.sum(entropy * answer) / answer.sum(),
            "policy_answer_entropy": jnp.sum(ent_all * answer_all) / answer_all.sum(),
            "length": maskf.sum(-1).mean(),
            "pos_token_frac": jnp.sum((adv.reshape(-1, 1) > 0) * maskf) / maskf.sum(),
            # P / N of the fresh batch at ratio 1 (token-weighted advantages): below BAPO's rho_0 = 0.5 the search
            # leaves its start bounds (0.6, 1.2); a property of the task and policy, the same formula in every arm
            "pn_onpolicy": jnp.sum(jnp.maximum(adv, 0.0)[:, None] * maskf)
            / jnp.maximum(jnp.sum(jnp.maximum(-adv, 0.0)[:, None] * maskf), 1e-9),
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
    reached = np.flatnonzero(curves["reward"] >= 0.8)
    # entropy at matched reward: a clip that only slows learning also slows the entropy fall, so compare the
    # policy's answer entropy when its (10-step moving average) reward first reaches each level
    kernel = np.ones(10) / 10
    ent_smooth = np.convolve(entropy, kernel, "valid")
    reward_ma = np.convolve(curves["reward"], kernel, "valid")
    ent_ma = np.convolve(curves["policy_answer_entropy"], kernel, "valid")
    at_reward = {}
    for level in REWARD_LEVELS:
        hit = np.flatnonzero(reward_ma >= level)
        at_reward[f"policy_answer_entropy_at_reward_{level}"] = float(ent_ma[hit[0]]) if hit.size else float("nan")
    return {
        "entropy_start": float(entropy[0]),
        "entropy_final": tail("entropy"),
        "entropy_min": float(ent_smooth.min()),   # of the 10-step moving average (one step's batch is noisy)
        "answer_entropy_final": tail("answer_entropy"),
        "policy_answer_entropy_final": tail("policy_answer_entropy"),
        "reward_final": tail("reward"),
        "success_final": tail("success"),
        # NaN when never reached (so a mean over seeds is NaN rather than pulled down by a sentinel)
        "steps_to_reward_0.8": float(reached[0]) if reached.size else float("nan"),
        "clip_low_mean": float(curves["clip_low"].mean()),
        "clip_high_mean": float(curves["clip_high"].mean()),
        "clip_frac_high_mean": float(curves["clip_frac_high"].mean()),
        "clip_frac_low_mean": float(curves["clip_frac_low"].mean()),
        "pos_token_frac_start": float(curves["pos_token_frac"][:10].mean()),
        "pn_onpolicy_below_rho0_frac": float((curves["pn_onpolicy"] < BapoConfig().rho0).mean()),
    } | at_reward


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=RunConfig.steps)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, from {sorted(ARMS)}")
    ap.add_argument("--lr", type=float, default=RunConfig.lr)
    ap.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default=RunConfig.optimizer)
    ap.add_argument("--epochs", type=int, default=RunConfig.epochs)
    ap.add_argument("--minibatches", type=int, default=RunConfig.minibatches)
    ap.add_argument("--prompts-per-step", type=int, default=RunConfig.prompts_per_step)
    ap.add_argument("--group-size", type=int, default=RunConfig.group_size)
    ap.add_argument("--staleness", type=int, default=RunConfig.staleness)
    ap.add_argument("--max-len", type=int, default=TaskConfig.max_len,
                    help="generation cap; a sequence that never emits EOS runs this long (and fails)")
    ap.add_argument("--cutoff-scores-zero", action=argparse.BooleanOptionalAction,
                    default=TaskConfig.cutoff_scores_zero, help="a sequence cut off at --max-len scores 0")
    ap.add_argument("--out", type=Path, default=Path("runs/clip_entropy"))
    args = ap.parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        ap.error(f"unknown arm(s) {unknown}; known: {sorted(ARMS)}")

    base = RunConfig(
        steps=args.steps, lr=args.lr, optimizer=args.optimizer, epochs=args.epochs, minibatches=args.minibatches,
        prompts_per_step=args.prompts_per_step, group_size=args.group_size, staleness=args.staleness,
        task=TaskConfig(max_len=args.max_len, cutoff_scores_zero=args.cutoff_scores_zero),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    summary: dict[str, dict] = {}
    window = max(1, args.steps // 10)
    keys = jnp.stack([jax.random.PRNGKey(seed) for seed in range(args.seeds)])
    for arm in arms:
        t0 = time.perf_counter()
        # all seeds at once (one compile per arm); seed s runs from PRNGKey(s), the same key in every arm
        records = jax.device_get(jax.vmap(make_run(replace(base, arm=arm)))(keys))
        per_seed = []
        for seed in range(args.seeds):
            curves = {k: np.asarray(v[seed]) for k, v in records.items()}
            per_seed.append(summarize_curves(curves, window))
            for i in range(args.steps):
                rows.append({"arm": arm, "seed": seed, "step": i, **{k: float(v[i]) for k, v in curves.items()}})
        summary[arm] = {k: float(np.mean([s[k] for s in per_seed])) for k in per_seed[0]} | {
            f"{k}_sd": float(np.std([s[k] for s in per_seed])) for k in SPREAD_KEYS
        } | {"per_seed": per_seed}
        s = summary[arm]
        print(f"[clip_entropy] {arm} ({args.seeds} seeds, {time.perf_counter() - t0:.1f}s): "
              f"entropy {s['entropy_start']:.2f} -> {s['entropy_final']:.2f} (min {s['entropy_min']:.2f}), "
              f"policy answer entropy {s['policy_answer_entropy_final']:.2f}, reward {s['reward_final']:.2f}, "
              f"bounds [{s['clip_low_mean']:.2f}, {s['clip_high_mean']:.2f}]", file=sys.stderr)

    with open(args.out / "curves.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    config = {k: v for k, v in asdict(base).items() if k not in ("arm", "seed")} | {"arms": arms, "seeds": args.seeds}
    result = {
        "experiment": "clip_entropy",
        "config": config,
        "summary": {a: {k: v for k, v in s.items() if k != "per_seed"} for a, s in summary.items()},
    }
    (args.out / "summary.json").write_text(json.dumps(result | {"per_seed": summary}, indent=2))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

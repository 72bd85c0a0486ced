"""The GRPO learner: draw tasks -> rollouts -> rewards -> group advantages -> update -> new weights -> repeat.

One step:
1. draw ``tasks_per_step`` training tasks (a function of the seed and the step, so a resumed run draws what
   the uninterrupted run would have);
2. run ``group_size`` episodes of each concurrently over the environment (``rl_jax.rollout``), generation
   batched across episodes, each episode's tokens kept exactly as sampled;
3. group advantages from the rewards; faulty episodes (``RolloutConfig.on_fault``) are dropped from their
   group's statistics and trained on with a zero mask, or kept with reward 0;
4. one GRPO update over the collated batch (``rl_jax.train``: micro-batches, adaptive clipping, loss window);
5. the new parameters go to the generator, the sampler or the engine (same compiled programs), metrics to
   JSONL and TensorBoard, and, after the step's evaluation if one is due, a checkpoint to disk (orbax,
   asynchronous) with the next step as the data position.
Held-out evaluation runs before the first step, every ``eval_every`` steps and after the last, over the first
``eval_tasks`` tasks of the eval split with the same episode definition. A resumed run first cuts
``episodes.jsonl`` and ``metrics.jsonl`` back to its checkpoint (``rewind_logs``): the steps it runs again
are logged once, as in a run never interrupted.

The learner knows the environment only through ``rl_jax.rollout.Environment``.
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from rl_jax.chat import ChatFormat
from rl_jax.engine import EngineConfig, SlotEngine
from rl_jax.engine.rollout_generator import EngineGenerator
from rl_jax.grpo import AdvantageConfig, group_advantages
from rl_jax.learner.config import LearnerConfig
from rl_jax.learner.hosts import gather_max, gather_records, process_share
from rl_jax.learner.metrics_log import METRICS_FILE, MetricsLog, keep_records
from rl_jax.rollout import BatchedGenerator, Environment, Group, Rollout, RolloutConfig, collect_groups
from rl_jax.sampling import Sampler, SamplingConfig
from rl_jax.sharding import batch_shards
from rl_jax.train import (
    Batch,
    Checkpointer,
    TrainConfig,
    TreeShape,
    bucket_length,
    check_sampling_matches,
    collate,
    collate_tree,
    create_train_state,
    saves_enough,
    shard_batch,
    tree_shape,
)

Progress = Callable[[str], None]
# held-out metrics from the eval episodes' summaries (``episode_summary``) and k (runs per task)
EvalSummary = Callable[[Sequence[Mapping[str, Any]], int], Mapping[str, float]]


@dataclass(frozen=True)
class RunConfigs:
    """The rl_jax configs one run composes (the experiment owns them; the learner only reads)."""

    learner: LearnerConfig
    sampling: SamplingConfig
    rollout: RolloutConfig
    train: TrainConfig
    advantages: AdvantageConfig
    # None: the rollout pool generates with the plain sampler (``BatchedGenerator``); an ``EngineConfig``: with
    # the continuous engine (``SlotEngine`` behind ``EngineGenerator``), whose ``max_len`` is the episodes' context
    engine: EngineConfig | None = None


def generation_model(graphdef: nnx.GraphDef, params: nnx.State, frozen: nnx.State) -> nnx.Module:
    """The policy as the sampler runs it: floating parameters in the compute dtype. Under mixed precision the
    trainer keeps f32 masters; decoding reads every weight once per token, so it reads them cast once here
    rather than cast at every step (a copy of the weights in the compute dtype, made at each sync), and one
    layer at a time: scanned training's stacked layers are unstacked here."""
    model = nnx.merge(graphdef, params, frozen)
    # scanned training stores the layers stacked; decoding wants each layer's weights in their own buffers
    # (rl_jax/models/transformer.py says why): a copy of the layer weights, one slice per layer and kind
    model.scan = False
    graphdef, params, frozen = nnx.split(model, nnx.Param, ...)
    dtype = jnp.dtype(model.dtype)
    if all(x.dtype == dtype for x in jax.tree.leaves(params) if jnp.issubdtype(x.dtype, jnp.floating)):
        return model
    cast = jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)
    return nnx.merge(graphdef, cast, frozen)


def draw_tasks(task_ids: Sequence[str], n: int, seed: int, step: int) -> list[str]:
    """``n`` distinct tasks for ``step`` (with repeats only when there are fewer than ``n``), a pure function."""
    if not task_ids:
        raise ValueError("no tasks to draw from")
    rng = np.random.default_rng([seed, step])
    ordered = sorted(task_ids)
    picks = rng.permutation(len(ordered))[:n].tolist()
    while len(picks) < n:
        picks += rng.permutation(len(ordered))[: n - len(picks)].tolist()
    return [ordered[i] for i in picks]


def episode_summary(r: Rollout, step: int, split: str, slot: int) -> dict[str, Any]:
    """One episode as the run records it (``episodes.jsonl``) and its metrics count it (JSON-able)."""
    return {"step": step, "split": split, "slot": slot, "task_id": r.task_id, "episode_id": r.episode_id,
            "reward": r.reward, "passed": r.passed, "stop_reason": r.stop_reason, "fault": r.fault,
            "error": r.error, "turns": r.record.turns, "sampled_tokens": r.sampled_tokens, "tokens": len(r.ids),
            "prompt_tokens": r.prompt_tokens, "parse_errors": r.parse_errors, "tool_errors": r.tool_errors,
            "tool_calls": [{"name": c.name, "arguments": dict(c.arguments), "is_error": c.is_error}
                           for c in r.record.tool_calls],
            "final_response": r.record.final_response, "seconds": dict(r.seconds)}


def rollout_metrics(episodes: Sequence[Mapping[str, Any]], on_fault: str = "drop") -> dict[str, float]:
    """What the episodes of a batch did: reward and pass rate, stop reasons, errors, turns and tokens.

    Reward and pass rate are over the episodes that count (``on_fault``: dropped faults do not, so a broken tool
    server reads as ``fault_frac``, not as a worse policy). ``tools_s_sum`` and ``grade_s_sum`` add up every
    episode's time: episodes run concurrently, so they can exceed the rollouts' wall time."""
    n = max(len(episodes), 1)
    counted = [e for e in episodes if not e["fault"] or on_fault == "zero_reward"]
    calls = sum(len(e["tool_calls"]) for e in episodes)
    turns = sum(e["turns"] for e in episodes)
    out: dict[str, float] = {
        "episodes": float(len(episodes)),
        "reward_mean": sum(e["reward"] for e in counted) / max(len(counted), 1),
        "pass_rate": sum(e["passed"] for e in counted) / max(len(counted), 1),
        "fault_frac": sum(e["fault"] for e in episodes) / n,
        "tool_calls_per_episode": calls / n,
        "tool_error_rate": sum(e["tool_errors"] for e in episodes) / max(calls, 1),
        "parse_error_rate": sum(e["parse_errors"] for e in episodes) / max(turns, 1),
        "turns_per_episode": turns / n,
        "sampled_tokens_per_episode": sum(e["sampled_tokens"] for e in episodes) / n,
        "tokens_per_episode": sum(e["tokens"] for e in episodes) / n,
        "prompt_tokens_max": float(max((e["prompt_tokens"] for e in episodes), default=0)),
        "tools_s_sum": sum(e["seconds"].get("tools", 0.0) for e in episodes),
        "grade_s_sum": sum(e["seconds"].get("grade", 0.0) for e in episodes),
    }
    for reason, count in Counter(e["stop_reason"] for e in episodes).items():
        out[f"stop_{reason}_frac"] = count / n
    return out


def group_rewards(groups: Sequence[Group], on_fault: str) -> tuple[np.ndarray, np.ndarray]:
    """Rewards [G, K] and which of them count ([G, K] bool): faults count only as ``zero_reward``."""
    rewards = np.array([[r.reward for r in g.rollouts] for g in groups], np.float32)
    valid = np.array([[not r.fault or on_fault == "zero_reward" for r in g.rollouts] for g in groups], bool)
    return rewards, valid


class Learner:
    """GRPO on an environment; ``await learner.run()`` trains to ``LearnerConfig.steps`` and returns a summary.

    Build with ``Learner.create``. With ``resume=True`` the latest checkpoint (in ``out/checkpoints`` unless
    ``TrainConfig.checkpoint_dir`` names another folder) is restored first and training continues at the step
    it recorded; without it, a folder that already holds checkpoints is refused.
    """

    def __init__(self, *, env: Environment, fmt: ChatFormat, configs: RunConfigs, graphdef: Any, state: Any,
                 train_step: Callable, generator: BatchedGenerator | EngineGenerator, mesh: Mesh, out: Path,
                 log: MetricsLog, checkpointer: Checkpointer | None, start_step: int,
                 progress: Progress, eval_summary: EvalSummary | None, pad_id: int, writer: bool) -> None:
        self.env, self.fmt, self.configs = env, fmt, configs
        self.graphdef, self.state, self.train_step = graphdef, state, train_step
        self.generator, self.mesh, self.out = generator, mesh, out
        self.log, self.checkpointer, self.start_step = log, checkpointer, start_step
        self.progress, self.eval_summary, self.pad_id, self.writer = progress, eval_summary, pad_id, writer
        # episode ids name forks on a shared tool fleet: unique to this launch, so a resumed run (or another run
        # on the same fleet) never reopens an episode another attempt wrote to; sampling keys do not use them
        self._launch = gather_records([secrets.token_hex(4)])[0]  # process 0's: every process names them alike

    @classmethod
    def create(cls, model: nnx.Module, fmt: ChatFormat, env: Environment, configs: RunConfigs, mesh: Mesh,
               out: Path, *, resume: bool = False, progress: Progress = print,
               eval_summary: EvalSummary | None = None) -> Learner:
        check_sampling_matches(configs.sampling, configs.train)
        processes = jax.process_count()
        if configs.learner.tasks_per_step < processes or 0 < configs.learner.eval_tasks < processes:
            raise ValueError(f"tasks_per_step ({configs.learner.tasks_per_step}) and eval_tasks "
                             f"({configs.learner.eval_tasks}, or 0) must be at least the number of processes "
                             f"({processes}): each process rolls out its share of them")
        context = configs.rollout.context_limit or model.config.max_position_embeddings
        if context > model.config.max_position_embeddings:
            raise ValueError(f"rollout.context_limit ({context}) exceeds the model's context "
                             f"({model.config.max_position_embeddings})")
        out.mkdir(parents=True, exist_ok=True)
        graphdef, state, train_step = create_train_state(model, configs.train, mesh)
        writer = jax.process_index() == 0
        train = configs.train
        checkpointer = Checkpointer(Path(train.checkpoint_dir) if train.checkpoint_dir else out / "checkpoints",
                                    keep=train.keep_checkpoints, async_save=train.async_checkpointing)
        start_step = 0
        if not resume and checkpointer.latest_step() is not None:
            raise FileExistsError(f"{checkpointer.directory} holds checkpoints of another run: resume it, or use "
                                  "a new output folder")
        if resume:
            if checkpointer.latest_step() is None:
                raise FileNotFoundError(f"--resume: no checkpoint under {checkpointer.directory}")
            state, meta = checkpointer.restore(state)
            start_step = int(meta["data_position"]["next_step"])
            progress(f"resumed from {checkpointer.directory} at step {start_step}")
            if writer:
                dropped = rewind_logs(out, start_step)
                if dropped:
                    progress(f"dropped {dropped} log line(s) written after that checkpoint (its steps run again)")
        pad_id = fmt.tokenizer.pad_token_id or 0
        generating = generation_model(graphdef, state.params, state.frozen)
        generating.remat = False  # rematerialization is for the backward pass; the sampler has none
        if configs.engine is None:
            generator: BatchedGenerator | EngineGenerator = BatchedGenerator(
                Sampler(generating, pad_id=pad_id, mesh=mesh), configs.sampling, context_limit=context,
                max_wait_s=configs.rollout.max_wait_s)
        else:
            if configs.engine.max_len > context:
                raise ValueError(f"engine.max_len ({configs.engine.max_len}) exceeds the run's context ({context}: "
                                 "rollout.context_limit, or the model's)")
            generator = EngineGenerator(SlotEngine(generating, configs.engine, mesh=mesh), configs.sampling)
        log = MetricsLog(out, enabled=writer, purge_step=start_step if resume else None)
        return cls(env=env, fmt=fmt, configs=configs, graphdef=graphdef, state=state, train_step=train_step,
                   generator=generator, mesh=mesh, out=out, log=log, checkpointer=checkpointer,
                   start_step=start_step, progress=progress, eval_summary=eval_summary, pad_id=pad_id,
                   writer=writer)

    # ---- the loop ------------------------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        cfg = self.configs.learner
        started = time.monotonic()
        episodes = 0
        last_eval: Mapping[str, float] = {}
        last_train: Mapping[str, float] = {}
        try:
            if cfg.eval_at_start and cfg.eval_tasks and self.start_step == 0:
                last_eval = await self.evaluate(0)
            for step in range(self.start_step, cfg.steps):
                last_train = await self.step(step)
                episodes += int(last_train["episodes"])
                done = step + 1
                if cfg.eval_tasks and ((cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps):
                    last_eval = await self.evaluate(done)
                self._checkpoint(done)
        finally:
            if self.checkpointer is not None:
                self.checkpointer.wait()
                self.checkpointer.close()
            self.log.close()
        return {"grpo_steps": cfg.steps - self.start_step, "episodes": episodes,
                "mean_reward": last_train.get("reward_mean", math.nan),
                "train_pass_rate": last_train.get("pass_rate", math.nan),
                "eval_pass_rate": last_eval.get("pass_rate", math.nan),
                "eval_mean_reward": last_eval.get("reward_mean", math.nan),
                "wall_s": round(time.monotonic() - started, 1), "out": str(self.out)}

    async def step(self, step: int) -> dict[str, float]:
        cfg = self.configs
        t_step = time.monotonic()
        drawn = draw_tasks(self.env.task_ids("train"), cfg.learner.tasks_per_step, cfg.learner.seed, step)
        task_ids, offset = process_share(drawn)
        self.progress(f"step {step + 1}/{cfg.learner.steps}: rollouts of {len(task_ids)} task(s) x "
                      f"{cfg.rollout.group_size}" + (f" (this process's share of {len(drawn)})"
                                                     if jax.process_count() > 1 else ""))
        self.generator.reset_stats()
        t0 = time.monotonic()
        key = jax.random.fold_in(jax.random.key(cfg.learner.seed), step)
        groups = await collect_groups(self.env, self.generator, self.fmt, task_ids, cfg.rollout, key,
                                      episode_prefix=f"{self._launch}-s{step}", slot_offset=offset)
        rollout_s = time.monotonic() - t0
        gen = self.generator.reset_stats()
        episodes = self._summaries(groups, step, "train", offset)
        metrics = rollout_metrics(episodes, cfg.rollout.on_fault)
        self._record_episodes(episodes)
        self._report_faults(episodes)
        self.progress(f"step {step + 1}: {int(metrics['episodes'])} episodes in {rollout_s:.1f} s, reward "
                      f"{metrics['reward_mean']:.3f}, pass rate {metrics['pass_rate']:.2f}, "
                      f"{metrics['turns_per_episode']:.1f} turns and {metrics['sampled_tokens_per_episode']:.0f} "
                      f"sampled tokens per episode")

        rewards, valid = group_rewards(groups, cfg.rollout.on_fault)
        advantages = np.asarray(group_advantages(jnp.asarray(rewards), jnp.asarray(valid), cfg.advantages))
        rows = [(r, float(a), bool(v), i) for i, (g, adv_row, valid_row)
                in enumerate(zip(groups, advantages, valid, strict=True))
                for r, a, v in zip(g.rollouts, adv_row, valid_row, strict=True) if r.ids]
        everyone = gather_records([[[float(a), bool(v)] for a, v in zip(adv_row, valid_row, strict=True)]
                                   for adv_row, valid_row in zip(advantages, valid, strict=True)])
        metrics.update(self._advantage_metrics(everyone))
        t0 = time.monotonic()
        train_metrics = self._update(rows)
        train_s = time.monotonic() - t0
        metrics.update(train_metrics)
        t0 = time.monotonic()
        self.generator.load_state(generation_model(self.graphdef, self.state.params, self.state.frozen))
        sync_s = time.monotonic() - t0
        metrics.update({"rollout_s": rollout_s, "generate_s": gen.seconds, "prefill_s": gen.prefill_seconds,
                        "decode_s": gen.decode_seconds,
                        "generate_calls": float(gen.calls), "train_s": train_s, "weight_sync_s": sync_s})
        metrics["step_s"] = time.monotonic() - t_step
        self.log.write(step + 1, metrics, split="train")
        self.progress(f"step {step + 1}: update in {train_s:.1f} s (loss {metrics.get('loss', math.nan):.4f}, "
                      f"clip [{metrics.get('clip_low', math.nan):.3f}, {metrics.get('clip_high', math.nan):.3f}], "
                      f"log-prob gap {metrics.get('logprob_gap_mean', math.nan):.2e}); step {metrics['step_s']:.1f} s")
        return metrics

    def _checkpoint(self, done: int) -> None:
        """The checkpoint after step ``done`` (1-based), when one is due: saved after the step's logs and its
        evaluation, so every line a checkpoint's run wrote is there when the checkpoint is (``rewind_logs``)."""
        cfg = self.configs
        if self.checkpointer is not None and (done % cfg.train.checkpoint_every == 0 or done == cfg.learner.steps):
            # numbered by the learner's steps: an update skipped for want of tokens does not advance state.step
            self.checkpointer.save(self.state, data_position={"next_step": done}, force=True, step=done)

    def _collate(self, rows: Sequence[tuple[Rollout, float, bool, int]]) -> Any:
        """This process's rows as a host batch: a prefix tree (its rows' shared prompt and each group's request
        once) when ``TrainConfig.prefix_tree`` and it saves enough, plain rows otherwise. Under multi-host,
        with the layout, row count, lengths and loss window every process agreed on (they are shapes of one
        compiled step)."""
        cfg = self.configs
        if not rows:  # nothing to train on here (every episode failed to start): one empty row holds the place
            rows = [(None, 0.0, False, 0)]  # type: ignore[list-item]
        tokens = [r.ids if r is not None else (self.pad_id, self.pad_id) for r, _, _, _ in rows]
        masks = [r.loss_mask if r is not None else (0, 0) for r, _, _, _ in rows]
        logps = [r.logprobs if r is not None else (0.0, 0.0) for r, _, _, _ in rows]
        advs, valid, groups = [a for _, a, _, _ in rows], [v for _, _, v, _ in rows], [g for *_, g in rows]
        processes = jax.process_count()
        copies = max(1, batch_shards(self.mesh) // processes)  # one tree copy per batch shard of this process
        per_step = copies * cfg.train.micro_batches
        buckets, tree = cfg.train.length_buckets, cfg.train.prefix_tree
        micro, pack = cfg.train.micro_batches, cfg.train.prefix_tree_pack
        if processes == 1:
            if tree:
                return collate_tree(tokens, masks, logps, advs, valid=valid, groups=groups, copies=copies,
                                    micro_batches=micro, buckets=buckets, pad_id=self.pad_id,
                                    rows_multiple=per_step, min_saving=cfg.train.prefix_tree_min_saving,
                                    pack=pack)
            return collate(tokens, masks, logps, advs, valid=valid, buckets=buckets, pad_id=self.pad_id,
                           rows_multiple=per_step)
        natural = tree_shape(tokens, masks, valid=valid, groups=groups, copies=copies, micro_batches=micro,
                             rows_multiple=per_step, buckets=buckets) if tree else TreeShape(0, 0, 0, 0)
        n_rows, length, *agreed = gather_max(
            [len(rows), bucket_length(max(len(t) for t in tokens), buckets), *natural.as_list()]
        )
        n_rows = -(-n_rows // per_step) * per_step
        shape = TreeShape.from_list(agreed)
        if tree and saves_enough(shape, rows=n_rows, copies=copies, plain_length=length,
                                 min_saving=cfg.train.prefix_tree_min_saving, micro_batches=micro, pack=pack):
            def lay_out(**window: Any) -> Batch:
                return collate_tree(tokens, masks, logps, advs, valid=valid, groups=groups, copies=copies,
                                    micro_batches=micro, buckets=buckets, pad_id=self.pad_id,
                                    rows_multiple=n_rows, shape=shape, pack=pack, **window)
            length = shape.length
        else:
            def lay_out(**window: Any) -> Batch:
                return collate(tokens, masks, logps, advs, valid=valid, buckets=(length,), pad_id=self.pad_id,
                               rows_multiple=n_rows, **window)
        (window,) = gather_max([lay_out().loss_window or length])
        return lay_out(window=window if window < length else None, window_buckets=None if window >= length else 1)

    def _update(self, rows: Sequence[tuple[Rollout, float, bool, int]]) -> dict[str, float]:
        if not gather_max([len(rows)])[0]:
            self.progress("no episode produced tokens: update skipped")
            return {"update_skipped": 1.0}
        batch = self._collate(rows)
        batch.check()
        batch = shard_batch(batch, self.mesh)
        self.state, out = self.train_step(self.state, batch)
        # the step's own counter is the log line's "step"
        metrics = {k: float(v) for k, v in jax.device_get(out).items() if k != "step"}
        metrics["batch_rows"], metrics["batch_length"] = float(batch.batch_size), float(batch.length)
        # the token positions the step computes: the tree's shared segments once plus the rows' own tokens
        shared = sum(level.tokens.size for level in batch.shared) if batch.shared is not None else 0
        own = batch.lanes.tokens.size if batch.lanes is not None else batch.tokens.size  # packed or padded rows
        metrics["batch_prefix_tree"] = float(batch.shared is not None)
        metrics["batch_packed_rows"] = float(batch.lanes is not None)
        metrics["batch_positions"] = float(shared + own)
        return metrics

    @staticmethod
    def _advantage_metrics(groups: Sequence[Sequence[tuple[float, bool]]]) -> dict[str, float]:
        """Advantage statistics over every process's groups (``[advantage, counts]`` per rollout)."""
        a = np.array([adv for g in groups for adv, v in g if v], np.float64)
        silent = [not any(adv != 0 for adv, v in g if v) for g in groups]
        return {"advantage_abs_mean": float(np.abs(a).mean()) if a.size else 0.0,
                "advantage_max": float(a.max()) if a.size else 0.0,
                "advantage_min": float(a.min()) if a.size else 0.0,
                "groups_no_signal_frac": float(np.mean(silent)) if silent else 0.0}

    async def evaluate(self, step: int) -> dict[str, float]:
        cfg = self.configs
        chosen = sorted(self.env.task_ids("eval"))[: cfg.learner.eval_tasks]
        if not chosen:
            return {}
        task_ids, offset = process_share(chosen)
        self.progress(f"eval at step {step}: {len(chosen)} held-out task(s) x {cfg.learner.eval_samples}")
        t0 = time.monotonic()
        key = jax.random.key(cfg.learner.seed + 1_000_003)  # the same keys at every evaluation
        groups = await collect_groups(self.env, self.generator, self.fmt, task_ids, cfg.rollout, key,
                                      group_size=cfg.learner.eval_samples,
                                      episode_prefix=f"{self._launch}-eval{step}",
                                      slot_offset=offset)
        episodes = self._summaries(groups, step, "eval", offset)
        metrics = rollout_metrics(episodes, cfg.rollout.on_fault)
        self._report_faults(episodes)
        if self.eval_summary is not None:
            metrics.update(self.eval_summary(episodes, cfg.learner.eval_samples))
        metrics["eval_s"] = time.monotonic() - t0
        self._record_episodes(episodes)
        self.log.write(step, metrics, split="eval")
        self.progress(f"eval at step {step}: pass rate {metrics['pass_rate']:.2f}, reward "
                      f"{metrics['reward_mean']:.3f} in {metrics['eval_s']:.1f} s")
        return metrics

    @staticmethod
    def _summaries(groups: Sequence[Group], step: int, split: str, offset: int) -> list[dict[str, Any]]:
        """Every process's episodes of this batch (``episode_summary``), in the batch's slot order."""
        local = [episode_summary(r, step, split, offset + i) for i, g in enumerate(groups) for r in g.rollouts]
        return gather_records(local)

    def _report_faults(self, episodes: Sequence[Mapping[str, Any]]) -> None:
        """Faulty episodes are counted in the metrics; say what went wrong too, so a broken setup is seen."""
        faults = Counter((e["stop_reason"], e["error"].splitlines()[0][:200] if e["error"] else "")
                         for e in episodes if e["fault"])
        for (reason, error), n in faults.most_common(3):
            self.progress(f"  {n} episode(s) ended by {reason}: {error}")

    def _record_episodes(self, episodes: Sequence[Mapping[str, Any]]) -> None:
        """Every episode's outcome, appended to ``episodes.jsonl`` (what was done, what it earned, why it ended)."""
        if not self.writer:
            return
        with (self.out / "episodes.jsonl").open("a", encoding="utf-8") as fh:
            for e in episodes:
                fh.write(json.dumps(e, ensure_ascii=False, default=str) + "\n")


def rewind_logs(out: Path, next_step: int) -> int:
    """Cut a run's ``episodes.jsonl`` and ``metrics.jsonl`` back to a checkpoint whose run goes on at
    ``next_step`` (0-based): a run killed after logging a step but before that step's checkpoint would log
    it twice when resumed. Kept: train episodes of steps before ``next_step`` (numbered from 0), eval episodes
    and metrics lines of steps up to ``next_step`` (numbered by the steps done). Returns the lines dropped.
    (TensorBoard's event files are not rewritten: a step run again shows twice there.)"""
    def episode(record: dict[str, Any]) -> bool:
        step = record.get("step")
        limit = next_step - 1 if record.get("split") == "train" else next_step
        return isinstance(step, int) and step <= limit

    def metrics(record: dict[str, Any]) -> bool:
        step = record.get("step")
        return isinstance(step, int) and step <= next_step

    return keep_records(out / "episodes.jsonl", episode) + keep_records(out / METRICS_FILE, metrics)


def run_learner(learner: Learner) -> dict[str, Any]:
    """Run ``learner`` to completion in a fresh event loop (the synchronous entry point)."""
    return asyncio.run(learner.run())

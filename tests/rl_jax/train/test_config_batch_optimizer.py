"""Configs, batches and the optimizer: bucketing, padding and masks, schedule shape, decay mask, clipping,
and the multi-host settings. No model and no compilation: these run in milliseconds."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from train_helpers import tiny_model

from rl_jax.sampling import SamplingConfig
from rl_jax.train import (
    DistributedConfig,
    OptimizerConfig,
    TrainConfig,
    bucket_length,
    check_sampling_matches,
    collate,
    learning_rate_schedule,
    loss_window,
    make_optimizer,
    split_micro_batches,
    split_model,
)


def test_length_is_padded_to_the_smallest_bucket_that_holds_it():
    assert bucket_length(1, (64, 128)) == 64
    assert bucket_length(64, (64, 128)) == 64
    assert bucket_length(65, (128, 64)) == 128
    with pytest.raises(ValueError, match="exceeds the largest length bucket 128"):
        bucket_length(129, (64, 128))


def test_collate_pads_right_and_masks_prompt_tool_output_and_padding():
    batch = collate(
        tokens=[[5, 6, 7, 8], [9, 10]],
        loss_masks=[[0, 1, 0, 1], [1, 1]],
        old_logps=[[-9.0, -1.0, -9.0, -2.0], [-3.0, -4.0]],
        advantages=[0.5, -1.0],
        buckets=(8, 16),
        pad_id=0,
        rows_multiple=4,
    )
    batch.check()
    assert batch.tokens.shape == (4, 8)  # rows padded to a multiple of 4, length to the bucket 8
    np.testing.assert_array_equal(batch.tokens[0], [5, 6, 7, 8, 0, 0, 0, 0])
    np.testing.assert_array_equal(batch.positions[1], [0, 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(batch.attention_mask[1], [1, 1, 0, 0, 0, 0, 0, 0])
    # position 0 is never trained on (nothing predicts it), even when its mask says 1
    np.testing.assert_array_equal(batch.loss_mask[0], [0, 1, 0, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(batch.loss_mask[1], [0, 1, 0, 0, 0, 0, 0, 0])
    # sampler log-probs survive only where trained on; empty rows carry nothing
    np.testing.assert_array_equal(batch.old_logp[0], [0, -1, 0, -2, 0, 0, 0, 0])
    np.testing.assert_array_equal(batch.advantages, [0.5, -1.0, 0.0, 0.0])
    assert not batch.loss_mask[2:].any() and batch.ref_logp is None


def test_collate_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="trajectory 0"):
        collate([[1, 2, 3]], [[1, 1]], [[0.0, 0.0, 0.0]], [1.0], buckets=(8,))
    with pytest.raises(ValueError, match="advantages has 2 entries for 1"):
        collate([[1, 2]], [[1, 1]], [[0.0, 0.0]], [1.0, 2.0], buckets=(8,))


def test_collate_keeps_a_failed_episodes_tokens_but_trains_on_none_of_them():
    tokens = [[5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 17, 18], [19, 20, 21]]
    masks = [[0, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1, 1, 1, 1], [0, 1, 1]]
    olds = [[-1.0] * 4, [-2.0] * 10, [-3.0] * 3]
    refs = [[-1.5] * 4, [-2.5] * 10, [-3.5] * 3]
    adv = [0.5, float("nan"), -0.5]  # a crashed episode's reward, and so advantage, may be anything
    batch = collate(tokens, masks, olds, adv, refs, valid=[True, False, True], buckets=(16,), window_buckets=4)
    batch.check()
    # its tokens stay: same length bucket and rows as if it had succeeded
    chex.assert_shape(batch.tokens, (3, 16))
    np.testing.assert_array_equal(batch.tokens[1, :10], tokens[1])
    np.testing.assert_array_equal(batch.attention_mask[1], [True] * 10 + [False] * 6)
    np.testing.assert_array_equal(batch.positions[1, :10], np.arange(10))
    # but nothing in it is trained on: no loss token (no denominator, no gradient), advantage 0 (not NaN)
    chex.assert_trees_all_equal(batch.loss_mask[1], np.zeros(16, np.float32))
    chex.assert_trees_all_equal(batch.old_logp[1], np.zeros(16, np.float32))
    chex.assert_trees_all_equal(batch.advantages, np.array([0.5, 0.0, -0.5], np.float32))
    # the other rows are as without the flag, and the loss window holds only their (short) stretches
    plain = collate(tokens, masks, olds, [0.5, 0.0, -0.5], refs, buckets=(16,), window_buckets=4)
    for field in ("tokens", "positions", "attention_mask", "loss_mask", "old_logp", "ref_logp"):
        chex.assert_trees_all_equal(getattr(batch, field)[[0, 2]], getattr(plain, field)[[0, 2]])
    assert plain.loss_window == 8  # row 1's eight predictions: two quarters of 16
    assert batch.loss_window == 4 and batch.loss_start.tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match=r"one flag per trajectory, \(3,\)"):
        collate(tokens, masks, olds, adv, valid=[True, False], buckets=(16,))
    with pytest.raises(ValueError, match="one flag per trajectory"):
        collate(tokens, masks, olds, adv, valid=np.ones((3, 1), bool), buckets=(16,))


def test_loss_window_covers_each_rows_trained_predictions_in_a_shared_bucketed_length():
    mask = np.zeros((4, 64), np.float32)
    mask[0, 40:50] = 1  # predictions at 39..48: ten positions
    mask[1, 60:64] = 1  # 59..62, moved left to fit the window inside the row
    mask[1, 61] = 0  # a tool output inside the stretch changes nothing
    mask[3, 10:12] = 1  # 9..10
    # row 2 trains on nothing
    start, window = loss_window(mask, buckets=8)
    assert window == 16  # the longest stretch (10) rounded up to a multiple of 64 / 8
    np.testing.assert_array_equal(start, [39, 48, 0, 9])
    assert start.dtype == np.int32
    covered = np.zeros_like(mask, bool)
    for row, s in enumerate(start):
        covered[row, s + 1 : s + 1 + window] = True  # the tokens the window's predictions score
    assert covered[mask > 0].all()
    # token 0 is never predicted: a 1 there does not stretch the window
    first = np.zeros((1, 64), np.float32)
    first[0, [0, 5]] = 1
    assert loss_window(first, buckets=8) == (np.array([4], np.int32), 8)


def test_loss_window_is_none_when_it_would_span_the_sequence_or_nothing_is_trained():
    mask = np.zeros((2, 32), np.float32)
    assert loss_window(mask) == (None, None)
    mask[0, 1:] = 1
    assert loss_window(mask) == (None, None)
    mask[0, 1:4] = 0  # 28 predictions: in eighths of 32, a window of 28; in quarters (the default) all 32
    assert loss_window(mask, buckets=8)[1] == 28
    assert loss_window(mask) == (None, None)
    assert loss_window(mask, buckets=1) == (None, None)
    with pytest.raises(ValueError, match="buckets must be >= 1"):
        loss_window(mask, buckets=0)


def test_collate_sets_the_loss_window_unless_told_not_to():
    prompt, answer = list(range(1, 50)), [7, 8, 9]
    args = ([prompt + answer], [[0] * 49 + [1] * 3], [[-1.0] * 52], [1.0])
    batch = collate(*args, buckets=(64,))
    batch.check()
    assert batch.loss_window == 16 and batch.loss_start.tolist() == [48]  # quarters of 64 by default
    assert collate(*args, buckets=(64,), window_buckets=8).loss_window == 8
    plain = collate(*args, buckets=(64,), window_buckets=None)
    plain.check()
    assert plain.loss_window is None and plain.loss_start is None
    with pytest.raises(ValueError, match="window_buckets must be >= 1"):
        collate(*args, buckets=(64,), window_buckets=0)
    with pytest.raises(ValueError, match="give both or neither"):
        batch.replace(loss_start=None).check()
    with pytest.raises(ValueError, match="outside"):
        batch.replace(loss_window=65).check()
    with pytest.raises(ValueError, match="must lie in"):
        batch.replace(loss_start=np.array([49], np.int32)).check()
    with pytest.raises(ValueError, match="misses trained tokens"):
        batch.replace(loss_start=np.array([0], np.int32)).check()


def test_a_window_agreed_across_processes_is_taken_as_given():
    """Multi-host: every process collates its own rows and must reach the same shapes."""
    prompt, answer = list(range(1, 50)), [7, 8, 9]
    args = ([prompt + answer], [[0] * 49 + [1] * 3], [[-1.0] * 52], [1.0])
    batch = collate(*args, buckets=(64,), window=12)
    batch.check()
    assert batch.loss_window == 12 and batch.loss_start.tolist() == [48]
    assert collate(*args, buckets=(64,), window=64).loss_window is None  # the whole length: no window
    with pytest.raises(ValueError, match="hold the longest stretch"):
        collate(*args, buckets=(64,), window=2)
    # a process whose rows train on nothing still takes the agreed window
    start, window = loss_window(np.zeros((2, 64), np.float32), window=12)
    assert window == 12 and start.tolist() == [0, 0]


def test_micro_batches_take_strided_rows():
    batch = jax.tree.map(jnp.asarray, collate([[i, i] for i in range(6)], [[1, 1]] * 6, [[0.0, 0.0]] * 6,
                                               list(range(6)), buckets=(4,)))
    micro = split_micro_batches(batch, 2)
    chex.assert_shape(micro.tokens, (2, 3, 4))
    np.testing.assert_array_equal(micro.advantages, [[0, 2, 4], [1, 3, 5]])
    with pytest.raises(ValueError, match="does not split into 4"):
        split_micro_batches(batch, 4)


def test_schedule_warms_up_then_decays_by_cosine():
    cfg = OptimizerConfig(learning_rate=1e-3, warmup_steps=10, total_steps=110, final_lr_fraction=0.1)
    lr = learning_rate_schedule(cfg)
    np.testing.assert_allclose([lr(0), lr(5), lr(10)], [0.0, 5e-4, 1e-3], rtol=1e-6)
    np.testing.assert_allclose(lr(60), 1e-4 + 0.5 * (1e-3 - 1e-4), rtol=1e-5)  # halfway down the cosine
    np.testing.assert_allclose(lr(110), 1e-4, rtol=1e-5)
    constant = learning_rate_schedule(OptimizerConfig(learning_rate=2e-5, warmup_steps=4))
    np.testing.assert_allclose([constant(2), constant(4), constant(1000)], [1e-5, 2e-5, 2e-5], rtol=1e-6)


def test_optimizer_config_rejects_nonsense():
    with pytest.raises(ValueError, match="includes warmup"):
        OptimizerConfig(warmup_steps=10, total_steps=10)
    with pytest.raises(ValueError, match="max_grad_norm"):
        OptimizerConfig(max_grad_norm=0.0)
    with pytest.raises(ValueError, match="DATAxMODEL"):
        TrainConfig(mesh="8by4")
    assert TrainConfig(mesh="8x4").mesh_shape == (8, 4)


def test_the_sampler_and_trainer_must_share_one_temperature():
    # the defaults agree, so a run that sets neither trains on what it samples
    assert SamplingConfig().temperature == TrainConfig().temperature
    check_sampling_matches(SamplingConfig(), TrainConfig())
    check_sampling_matches(SamplingConfig(temperature=0.7, top_p=0.9), TrainConfig(temperature=0.7))
    # the pair the review found (sampler 0.7, trainer 1.0): step-0 ratios of 0.69-1.63, refused
    with pytest.raises(ValueError, match=r"sampler's temperature \(0\.7\) differs from the trainer's \(1\.0\)"):
        check_sampling_matches(SamplingConfig(temperature=0.7), TrainConfig())
    with pytest.raises(ValueError, match="differs"):
        check_sampling_matches(SamplingConfig(temperature=1.0), TrainConfig(temperature=0.7))
    # greedy decoding draws no sample from the policy: refused whatever the trainer's temperature
    for train_temperature in (1.0, 0.5):
        with pytest.raises(ValueError, match="greedy sampling"):
            check_sampling_matches(SamplingConfig(temperature=0.0), TrainConfig(temperature=train_temperature))


def test_weight_decay_spares_norm_scales_and_clipping_bounds_the_update():
    _, params, _ = split_model(tiny_model())
    opt = make_optimizer(OptimizerConfig(learning_rate=1.0, weight_decay=0.5, max_grad_norm=1.0, b1=0.0, b2=0.0,
                                         eps=1e-30))
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = opt.update(zero_grads, opt.init(params), params)
    # with zero gradients only weight decay moves weights: matrices shrink, 1-D norm scales do not
    np.testing.assert_allclose(updates["final_norm"].get_value(), 0.0)
    np.testing.assert_allclose(updates["embed"].get_value(), -0.5 * params["embed"].get_value(), rtol=1e-6)
    # a huge gradient is clipped to global norm 1 before AdamW
    clip = optax.clip_by_global_norm(1.0)
    huge = jax.tree.map(lambda p: jnp.full_like(p, 1e6), params)
    clipped, _ = clip.update(huge, clip.init(params))
    np.testing.assert_allclose(optax.tree.norm(clipped), 1.0, rtol=1e-5)


def test_distributed_settings_come_from_env_and_must_be_complete():
    env = {"RL_JAX_COORDINATOR": "10.0.0.1:8476", "RL_JAX_NUM_PROCESSES": "4", "RL_JAX_PROCESS_ID": "3"}
    cfg = DistributedConfig.from_env(env)
    assert cfg == DistributedConfig("10.0.0.1:8476", 4, 3) and cfg.is_multi_process
    cfg.validate()
    with pytest.raises(ValueError, match="needs all of"):
        DistributedConfig.from_env({"RL_JAX_COORDINATOR": "10.0.0.1:8476"}).validate()
    with pytest.raises(ValueError, match="outside"):
        DistributedConfig("h:1", 2, 2).validate()
    assert not DistributedConfig.from_env({}).is_multi_process

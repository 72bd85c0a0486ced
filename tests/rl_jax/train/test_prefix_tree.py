"""Tree training: GRPO rows laid out as a prefix tree (shared prompt once, each group's request once, each row's
own tokens) give the plain layout's loss, gradients and update; the collate finds the tree, keeps every trained
token's prediction in its row, falls back to plain rows when nothing is shared, and agrees on shapes."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from train_helpers import assert_same_step, state_arrays, train_config

from rl_jax.grpo import ClipConfig, LossConfig, summarize
from rl_jax.models import ModelConfig, Transformer, prefix_tree, unstack_layer_state
from rl_jax.models.attention import flash
from rl_jax.sharding import make_mesh
from rl_jax.train import collate, create_train_state, make_loss_fn, shard_batch, split_model
from rl_jax.train.tree_batch import TreeShape, collate_tree, lane_bucket, saves_enough, tree_shape

# GQA (4 query heads over 2 KV heads), two layers: the keys and values of one layer feed the next level
GQA = dict(
    family="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
    num_kv_heads=2, head_dim=8, tie_word_embeddings=True, max_position_embeddings=256,
)
PLAIN_BUCKETS = (64, 128)
TREE_BUCKETS = (16, 32, 64, 128)


def gqa_model(seed: int = 0) -> Transformer:
    return Transformer(ModelConfig(**GQA), rngs=nnx.Rngs(seed))


def grpo_rows(seed: int = 0, groups: int = 3, group_size: int = 4, system: int = 40, failed: int | None = 5):
    """CoreCraft-shaped rows: one system prompt, per group a request of its own length, per row a completion
    with a tool result in the middle (loss mask 0) and its own length; row ``failed`` is a failed episode."""
    rng = np.random.default_rng(seed)
    prompt = rng.integers(1, 64, system).tolist()
    tokens, masks, olds, advs, ids = [], [], [], [], []
    for g in range(groups):
        request = rng.integers(1, 64, int(rng.integers(3, 12))).tolist()
        for _ in range(group_size):
            n = int(rng.integers(6, 22))
            tokens.append(prompt + request + rng.integers(1, 64, n).tolist())
            mask = [0.0] * (system + len(request)) + [1.0] * n
            tool = system + len(request) + int(rng.integers(1, n - 3))
            mask[tool : tool + 2] = [0.0, 0.0]
            masks.append(mask)
            olds.append((np.log(1 / 64) + rng.normal(0, 0.3, len(tokens[-1]))).tolist())
            advs.append(float(rng.normal()))
            ids.append(g)
    valid = [i != failed for i in range(len(tokens))]
    return tokens, masks, olds, advs, ids, valid


def _grads(cfg, plain, tree, model=None):
    graphdef, params, frozen = split_model(model or gqa_model())
    fn = jax.jit(jax.value_and_grad(make_loss_fn(graphdef, cfg), has_aux=True))
    out = []
    for batch in (plain, tree):
        (num, terms), grads = fn(params, frozen, jax.tree.map(jnp.asarray, batch), None, None)
        out.append((float(num), float(terms.denominator), grads, terms.metrics))
    return out


def assert_same_gradients(cfg, plain, tree, model=None) -> None:
    (n1, d1, g1, m1), (n2, d2, g2, m2) = _grads(cfg, plain, tree, model)
    assert d1 == d2 > 0
    np.testing.assert_allclose(n2, n1, rtol=1e-5)
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(g1))
    chex.assert_trees_all_close(g2, g1, atol=1e-5 * scale, rtol=0)
    m1, m2 = summarize(m1), summarize(m2)
    assert set(m1) == set(m2)
    for key, want in m1.items():
        np.testing.assert_allclose(m2[key], want, rtol=1e-5, atol=1e-6, err_msg=key)


def _layouts(rows, **tree_kw):
    tokens, masks, olds, advs, ids, valid = rows
    plain = collate(tokens, masks, olds, advs, valid=valid, buckets=PLAIN_BUCKETS, window_buckets=8)
    tree = collate_tree(tokens, masks, olds, advs, valid=valid, groups=ids, buckets=TREE_BUCKETS,
                        window_buckets=8, **tree_kw)
    assert tree.shared is not None
    tree.check()
    return plain, tree


@pytest.mark.parametrize("pack", [True, False])
@pytest.mark.parametrize(
    "rule, aggregation",
    [("bapo", "token-mean"), ("ppo", "seq-mean-token-mean"), ("dapo", "seq-mean-token-scale"),
     ("dual", "token-mean")],
)
def test_loss_and_gradients_equal_the_plain_layout(rule, aggregation, pack):
    cfg = train_config(loss=LossConfig(clip=ClipConfig(rule=rule), aggregation=aggregation,
                                       token_scale=32.0 if aggregation == "seq-mean-token-scale" else None))
    plain, tree = _layouts(grpo_rows(1), pack=pack)
    assert tree.loss_window is not None  # the windowed projection runs on the rows' own tokens
    assert (tree.lanes is not None) == pack  # rows of 6-22 own tokens in a bucket of 32: packing saves
    assert_same_gradients(cfg, plain, tree)


def test_rows_without_a_given_grouping_are_grouped_by_their_requests():
    tokens, masks, olds, advs, ids, valid = grpo_rows(2)
    by_ids = collate_tree(tokens, masks, olds, advs, valid=valid, groups=ids, buckets=TREE_BUCKETS)
    by_tokens = collate_tree(tokens, masks, olds, advs, valid=valid, buckets=TREE_BUCKETS)
    chex.assert_trees_all_equal(by_tokens, by_ids)


@pytest.mark.parametrize("pack", [True, False])
@pytest.mark.parametrize("micro_batches", [1, 2])
def test_train_step_equals_the_plain_step(micro_batches, pack):
    cfg = train_config(micro_batches=micro_batches)
    plain, tree = _layouts(grpo_rows(3, groups=2, group_size=6), micro_batches=micro_batches, pack=pack)
    assert (tree.lanes is not None) == pack
    results = []
    for batch in (plain, tree):
        _, state, step = create_train_state(gqa_model(), cfg)
        state, metrics = step(state, jax.tree.map(jnp.asarray, batch))
        results.append((state_arrays(state), {k: np.asarray(v) for k, v in metrics.items()}))
    (want_state, want_metrics), (got_state, got_metrics) = results
    assert got_metrics["skipped"] == 0
    assert_same_step(got_state, got_metrics, want_state, want_metrics, cfg.optimizer.learning_rate)


def test_sharded_tree_on_a_4x2_mesh_equals_the_unsharded_plain_step():
    """Four copies (one per data shard), each with its own prefix; two micro-batches, rows packed in each."""
    cfg = train_config(micro_batches=2)
    rows = grpo_rows(5, groups=4, group_size=8)
    plain, tree = _layouts(rows, copies=4, micro_batches=2)
    assert tree.shared[0].rows == 4 and tree.batch_size == 32
    assert tree.lanes is not None and tree.lanes.rows % 8 == 0  # lanes per (copy, micro-batch)
    _, state, step = create_train_state(gqa_model(), cfg)
    want_state, want_metrics = step(state, jax.tree.map(jnp.asarray, plain))
    mesh = make_mesh(4, 2)
    _, state, step = create_train_state(gqa_model(), cfg, mesh)
    got_state, got_metrics = step(state, shard_batch(tree, mesh))
    assert_same_step(state_arrays(got_state), {k: np.asarray(v) for k, v in got_metrics.items()},
                     state_arrays(want_state), {k: np.asarray(v) for k, v in want_metrics.items()},
                     cfg.optimizer.learning_rate)


def test_a_tree_that_drops_the_prefix_gradient_is_caught(monkeypatch):
    """The mutation this suite must catch: the shared segments' keys and values cut off from the gradient
    (rows still see the right values, so the loss is unchanged)."""
    cfg = train_config()
    plain, tree = _layouts(grpo_rows(1))
    assert tree.lanes is not None
    gather = prefix_tree.gather_rows
    monkeypatch.setattr(prefix_tree, "gather_rows", lambda x, i, c: jax.lax.stop_gradient(gather(x, i, c)))
    with pytest.raises(AssertionError):
        assert_same_gradients(cfg, plain, tree)


def test_rows_with_nothing_in_common_fall_back_to_plain_rows():
    rng = np.random.default_rng(5)
    tokens = [rng.integers(1, 64, 30).tolist() for _ in range(4)]
    masks = [[0.0] * 5 + [1.0] * 25 for _ in range(4)]
    olds = [[-4.0] * 30 for _ in range(4)]
    advs = [1.0, -1.0, 0.5, -0.5]
    batch = collate_tree(tokens, masks, olds, advs, buckets=TREE_BUCKETS)
    assert batch.shared is None and batch.parent is None
    chex.assert_trees_all_equal(batch, collate(tokens, masks, olds, advs, buckets=TREE_BUCKETS))


def test_shared_segments_hold_no_trained_prediction():
    """A group whose rows all sample the same first tokens (a tool-call opener): those tokens are trained on,
    each against its row's advantage, so they and the position predicting the first stay in the rows."""
    prompt = list(range(1, 41))
    opener = [50, 51, 52]
    tokens = [prompt + opener + [10 + i, 20 + i] for i in range(4)]
    masks = [[0.0] * 40 + [1.0] * 5 for _ in range(4)]
    batch = collate_tree(tokens, masks, [[-1.0] * 45] * 4, [1.0, -1.0, 2.0, -2.0], buckets=TREE_BUCKETS)
    (level0,) = batch.shared  # one group: its shared part is all level 0
    assert int(level0.valid.sum()) == 39  # the prompt but its last token
    np.testing.assert_array_equal(batch.tokens[:, 0], [40] * 4)  # each row re-reads the predicting token
    np.testing.assert_array_equal(batch.positions[:, :2], [[39, 40]] * 4)
    np.testing.assert_array_equal(batch.loss_mask[:, :7].sum(axis=1), [5] * 4)


def test_copies_and_shapes():
    tokens, masks, olds, advs, ids, valid = grpo_rows(6, groups=3, group_size=2)
    natural = tree_shape(tokens, masks, valid=valid, groups=ids, copies=2, buckets=TREE_BUCKETS)
    assert natural.groups == 2  # copy 0 holds groups 0 and 1 (rows 0-2), copy 1 groups 1 and 2: 2 each
    bigger = TreeShape(natural.prefix * 2, natural.group_length, natural.groups * 2, natural.length)
    batch = collate_tree(tokens, masks, olds, advs, valid=valid, groups=ids, copies=2, buckets=TREE_BUCKETS,
                         shape=TreeShape.from_list(bigger.as_list()))
    batch.check()
    assert [lv.tokens.shape for lv in batch.shared] == [(2, natural.prefix * 2), (8, natural.group_length)]
    # copy 1's rows (3-5) point into its own groups; row 3 is group 1's, which copy 1 holds again
    np.testing.assert_array_equal(batch.parent, [0, 0, 1, 0, 1, 1])
    np.testing.assert_array_equal(batch.shared[0].tokens[0], batch.shared[0].tokens[1])
    smaller = TreeShape(natural.prefix, natural.group_length, natural.groups, natural.length // 2)
    with pytest.raises(ValueError, match="agreed shape"):
        collate_tree(tokens, masks, olds, advs, groups=ids, copies=2, buckets=TREE_BUCKETS, shape=smaller)


def test_one_group_needs_no_second_level_and_still_matches():
    """A single GRPO group (the main job's default): its whole prompt is level 0; no empty level 1 is built."""
    cfg = train_config()
    plain, tree = _layouts(grpo_rows(7, groups=1, group_size=4))
    assert len(tree.shared) == 1 and tree.shared[0].valid.sum() > 40
    np.testing.assert_array_equal(tree.parent, [0, 0, 0, 0])
    assert_same_gradients(cfg, plain, tree)


@pytest.mark.parametrize("policy", [None, "attention_saveable"])
@pytest.mark.parametrize("layout", ["plain", "tree", "unpacked tree"])
def test_scanned_layers_give_the_unrolled_loss_and_gradients(layout, policy):
    """``Transformer.scan``: the layers stored stacked and run as one lax.scan (rematerialized, recomputing
    everything or all but the attention), for plain rows and for the tree, against the unrolled layers without
    remat."""
    cfg = train_config()
    plain, tree = _layouts(grpo_rows(8), pack=layout != "unpacked tree")
    batch = plain if layout == "plain" else tree
    unrolled = gqa_model()
    scanned = gqa_model()
    scanned.scan, scanned.remat, scanned.remat_policy = True, True, policy
    (n1, d1, g1, _), _ = _grads(cfg, batch, batch, unrolled)
    (n2, d2, g2, _), _ = _grads(cfg, batch, batch, scanned)
    assert d1 == d2 > 0
    np.testing.assert_allclose(n2, n1, rtol=1e-5)
    # the scanned model stores (and so differentiates) each weight kind stacked over the layers
    assert len(jax.tree.leaves(g2)) < len(jax.tree.leaves(g1))
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(g1))
    chex.assert_trees_all_close(unstack_layer_state(g2), g1, atol=1e-5 * scale, rtol=0)


def test_packed_lanes_hold_every_row_and_its_slots_find_it():
    """Per (copy, micro-batch): the lanes hold exactly that cell's rows, each once, end to end, with their
    positions, one parent per lane (the rows' own); ``slot`` reads each row's tokens back out of them."""
    tokens, masks, olds, advs, ids, valid = grpo_rows(9, groups=4, group_size=4)
    batch = collate_tree(tokens, masks, olds, advs, valid=valid, groups=ids, copies=2, micro_batches=2,
                         buckets=TREE_BUCKETS)
    batch.check()
    lanes = batch.lanes
    assert lanes is not None and lanes.micro_batches == 2
    rows, copies, micro = batch.batch_size, 2, 2
    per_cell = lanes.rows // (copies * micro)
    for r in range(rows):
        c, k = divmod(r, rows // copies)[0], r % micro
        cell = [(c * per_cell + j) * micro + k for j in range(per_cell)]  # global lanes of the row's cell

        def flat(x, cell=cell):
            return np.asarray(x)[cell].reshape(-1)

        real = np.asarray(batch.attention_mask[r])
        slots = np.asarray(batch.slot[r])[real]
        np.testing.assert_array_equal(flat(lanes.tokens)[slots], np.asarray(batch.tokens[r])[real])
        np.testing.assert_array_equal(flat(lanes.positions)[slots], np.asarray(batch.positions[r])[real])
        assert flat(lanes.valid)[slots].all()
        assert len(set(flat(lanes.segment)[slots].tolist())) == 1  # one segment, in one lane
        lane = cell[slots[0] // lanes.length]
        assert int(lanes.parent[lane]) == int(batch.parent[r])
    # every valid lane slot belongs to exactly one row
    assert int(np.asarray(lanes.valid).sum()) == int(np.asarray(batch.attention_mask).sum())


def test_packing_for_other_micro_batches_than_the_step_runs_is_refused():
    _, tree = _layouts(grpo_rows(3, groups=2, group_size=6), micro_batches=2)
    assert tree.lanes is not None
    _, state, step = create_train_state(gqa_model(), train_config(micro_batches=1))
    with pytest.raises(ValueError, match="packed into lanes for 2 micro-batch"):
        step(state, jax.tree.map(jnp.asarray, tree))


def test_packed_rows_that_see_each_other_are_caught(monkeypatch):
    """The packing's mutation: the segment ids dropped, so a row attends to the rows before it in its lane."""
    cfg = train_config()
    plain, tree = _layouts(grpo_rows(1))
    assert int(np.asarray(tree.lanes.segment).max()) > 1
    attention = flash.context_attention
    monkeypatch.setattr(prefix_tree, "context_attention",
                        lambda *a, segment=None: attention(*a))
    with pytest.raises(AssertionError):
        assert_same_gradients(cfg, plain, tree)


def test_rows_that_packing_would_not_shorten_stay_unpacked():
    """Every row as long as its bucket: lanes would compute as many positions, so none are built."""
    prompt = list(range(1, 41))
    rng = np.random.default_rng(3)
    tokens = [prompt + rng.integers(1, 64, 32).tolist() for _ in range(4)]
    masks = [[0.0] * 40 + [1.0] * 32 for _ in range(4)]
    batch = collate_tree(tokens, masks, [[-1.0] * 72] * 4, [1.0, -1.0, 2.0, -2.0], buckets=TREE_BUCKETS)
    assert batch.shared is not None and batch.lanes is None and batch.slot is None


def test_lane_counts_come_in_two_sizes_an_octave():
    assert [lane_bucket(n) for n in range(1, 14)] == [1, 2, 3, 4, 6, 6, 8, 8, 12, 12, 12, 12, 16]


def test_processes_that_agree_on_a_packed_shape_each_fit_it_and_match_the_plain_step():
    """Two processes' rows (different lengths, so different natural lanes and widths): the element-wise
    maximum of their shapes holds both packings, and both decide alike whether to pack."""
    cfg = train_config()
    halves = [grpo_rows(10 + p, groups=2, group_size=4) for p in range(2)]
    shapes = [tree_shape(t, m, valid=v, groups=i, buckets=TREE_BUCKETS) for t, m, _, _, i, v in halves]
    agreed = TreeShape.from_list(np.max([s.as_list() for s in shapes], axis=0))
    assert agreed.packs(rows=8, copies=1) and saves_enough(agreed, rows=8, copies=1, plain_length=64)
    for tokens, masks, olds, advs, ids, valid in halves:
        tree = collate_tree(tokens, masks, olds, advs, valid=valid, groups=ids, buckets=TREE_BUCKETS,
                            window_buckets=8, shape=agreed)
        tree.check()
        assert tree.lanes is not None and tree.lanes.length == agreed.lane_length
        assert tree.lanes.rows == agreed.lanes
        plain = collate(tokens, masks, olds, advs, valid=valid, buckets=PLAIN_BUCKETS, window_buckets=8)
        assert_same_gradients(cfg, plain, tree)

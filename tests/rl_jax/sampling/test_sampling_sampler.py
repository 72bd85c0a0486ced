"""The KV-cache Sampler on a tiny random Transformer: exactness against full forward passes, padding, stops,
determinism, and a bounded number of compiled programs."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax._src import dispatch, monitoring

from rl_jax.models import ModelConfig, Transformer
from rl_jax.runtime import sampler_compiler_options
from rl_jax.sampling import Sampler, SamplingConfig, StopReason, token_logprobs
from rl_jax.sharding import make_mesh, shard_module

CFG = ModelConfig(
    family="llama",
    vocab_size=300,
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    rope_theta=10_000.0,
    max_position_embeddings=256,
)
PROMPTS = [[3, 14, 15, 92, 65], [35, 89], list(range(100, 120))]
NEW = 10
GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=NEW)
HOT = SamplingConfig(temperature=0.8, top_k=40, top_p=0.95, max_new_tokens=NEW)


def _model(seed: int = 0) -> Transformer:
    """A random tiny Transformer, its weights drawn with numpy: jax.random would compile one XLA program
    per parameter shape, which costs more than the whole sampler test on a busy 2-core machine."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(CFG, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(seed)

    def draw(path: tuple, x: jax.ShapeDtypeStruct) -> jax.Array:
        if len(x.shape) == 1:  # norm scales
            return jnp.asarray(np.ones(x.shape, x.dtype))
        # the embedding is scaled up so next-token distributions are peaked, not nearly uniform: greedy
        # paths are then far from ties and sampled paths differ between keys and seeds
        std = 0.8 if "embed" in str(path[0]) else 0.02
        return jnp.asarray(rng.normal(0.0, std, x.shape).astype(x.dtype))

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(draw, state))


@pytest.fixture(scope="module")
def model() -> Transformer:
    return _model()


@pytest.fixture(scope="module")
def sampler(model) -> Sampler:
    return Sampler(model)


_REFERENCE_LEN = 40  # right-padding to one length: one compiled reference forward, and causal masking
# keeps the padding from touching the real positions


@nnx.jit
def _padded_forward(model: Transformer, tokens: jax.Array) -> jax.Array:
    positions = jnp.arange(tokens.shape[1], dtype=jnp.int32)[None]
    return model(tokens, positions)[0][0]


def _full_logits(model: Transformer, ids: list[int]) -> jax.Array:
    """[T, V] logits of one sequence by a plain forward pass (no cache, no left padding)."""
    tokens = np.zeros((1, _REFERENCE_LEN), np.int32)
    tokens[0, : len(ids)] = ids
    return _padded_forward(model, jnp.asarray(tokens))[: len(ids)]


def _greedy_by_recompute(model: Transformer, prompt: list[int], n: int) -> list[int]:
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(jnp.argmax(_full_logits(model, seq)[-1])))
    return seq[len(prompt) :]


def test_result_shapes_and_dtypes(sampler):
    out = sampler.generate(PROMPTS, HOT, jax.random.key(0))
    chex.assert_shape([out.tokens, out.logprobs], (len(PROMPTS), NEW))
    chex.assert_shape([out.lengths, out.stop_reasons], (len(PROMPTS),))
    assert out.tokens.dtype == np.int32 and out.logprobs.dtype == np.float32
    assert out.lengths.dtype == np.int32 and out.stop_reasons.dtype == np.int8
    assert ((out.tokens >= 0) & (out.tokens < CFG.vocab_size)).all()
    np.testing.assert_array_equal(out.lengths, NEW)
    assert out.stop_reason_names() == ["max_new_tokens"] * len(PROMPTS)
    assert (out.logprobs < 0).all()


def test_greedy_equals_argmax_of_full_forward_recompute(model, sampler):
    out = sampler.generate(PROMPTS, GREEDY)
    for row, prompt in enumerate(PROMPTS):
        assert out.tokens[row].tolist() == _greedy_by_recompute(model, prompt, NEW)


@pytest.mark.parametrize("config", [GREEDY, HOT], ids=["greedy", "temperature-top_k-top_p"])
def test_logprobs_equal_a_forward_pass_over_the_sampled_sequence(model, sampler, config):
    out = sampler.generate(PROMPTS, config, jax.random.key(1))
    for row, prompt in enumerate(PROMPTS):
        new = out.tokens[row, : out.lengths[row]].tolist()
        logits = _full_logits(model, prompt + new)[len(prompt) - 1 : -1]
        expected = token_logprobs(logits, jnp.asarray(new), config.temperature)
        chex.assert_trees_all_close(out.logprobs[row, : len(new)], expected, atol=2e-5, rtol=1e-5)


def test_a_prompt_continues_the_same_alone_and_in_a_left_padded_batch(sampler):
    target = PROMPTS[0]
    alone = sampler.generate([target], GREEDY)
    mixed = sampler.generate([PROMPTS[2], [7] * 22, target, PROMPTS[1]], GREEDY)
    np.testing.assert_array_equal(mixed.tokens[2], alone.tokens[0])
    chex.assert_trees_all_close(mixed.logprobs[2], alone.logprobs[0], atol=1e-5)

    # with per-row keys a sampled row depends on its own key only, not on its neighbours or its row index
    key = jax.random.key(5)
    alone = sampler.generate([target], HOT, row_keys=key[None])
    others = jax.random.split(jax.random.key(6), 3)
    keys = jnp.stack([others[0], others[1], key, others[2]])
    mixed = sampler.generate([PROMPTS[2], [7] * 22, target, PROMPTS[1]], HOT, row_keys=keys)
    np.testing.assert_array_equal(mixed.tokens[2], alone.tokens[0])


def test_rows_stop_at_their_first_stop_token_and_keep_it(sampler):
    free = sampler.generate(PROMPTS, GREEDY)
    stop = int(free.tokens[0, 3])
    out = sampler.generate(PROMPTS, SamplingConfig(temperature=0.0, max_new_tokens=NEW, stop_token_ids=(stop,)))
    for row in range(len(PROMPTS)):
        hits = np.flatnonzero(free.tokens[row] == stop)
        if hits.size:
            n = int(hits[0]) + 1
            assert out.lengths[row] == n and out.stop_reasons[row] == StopReason.STOP_TOKEN
            assert out.tokens[row, n - 1] == stop
            assert (out.tokens[row, n:] == 0).all() and (out.logprobs[row, n:] == 0).all()
        else:
            n = NEW
            assert out.lengths[row] == NEW and out.stop_reasons[row] == StopReason.MAX_NEW_TOKENS
        np.testing.assert_array_equal(out.tokens[row, :n], free.tokens[row, :n])
    assert out.lengths[0] <= 4


def test_every_row_stopping_ends_generation_with_padded_outputs(sampler):
    free = sampler.generate(PROMPTS, GREEDY)
    stops = tuple(int(t) for t in free.tokens[:, 0])  # every row stops on its first token
    out = sampler.generate(PROMPTS, SamplingConfig(temperature=0.0, max_new_tokens=NEW, stop_token_ids=stops))
    np.testing.assert_array_equal(out.lengths, 1)
    np.testing.assert_array_equal(out.tokens[:, 0], free.tokens[:, 0])
    assert (out.tokens[:, 1:] == 0).all()


def test_same_key_same_samples_other_key_other_samples(sampler):
    a = sampler.generate(PROMPTS, HOT, jax.random.key(11))
    b = sampler.generate(PROMPTS, HOT, jax.random.key(11))
    c = sampler.generate(PROMPTS, HOT, jax.random.key(12))
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.logprobs, b.logprobs)
    assert not np.array_equal(a.tokens, c.tokens)


def test_progress_reports_each_stage_with_its_compile_time_and_changes_no_result(model):
    fresh = Sampler(model)  # compiles its programs in this call: the lines must say so
    lines: list[str] = []
    out = fresh.generate(PROMPTS, GREEDY, progress=lines.append)
    assert len(lines) == 2
    assert lines[0].startswith(f"prefill: {len(PROMPTS)} prompts as ") and "s compiling)" in lines[0]
    assert lines[1].startswith(f"decode: {int(out.lengths.max())} steps (up to {NEW})") and "s compiling)" in lines[1]
    again: list[str] = []
    quiet = fresh.generate(PROMPTS, GREEDY)
    fresh.generate(PROMPTS, GREEDY, progress=again.append)
    assert len(again) == 2 and not any("compiling" in line for line in again)  # the programs are reused
    np.testing.assert_array_equal(out.tokens, quiet.tokens)


def test_sampling_without_a_key_is_refused(sampler):
    with pytest.raises(ValueError, match="PRNG key"):
        sampler.generate(PROMPTS, HOT)


def test_new_weights_reuse_the_compiled_programs(model, sampler):
    before = sampler.generate(PROMPTS, GREEDY)
    programs = sampler.compiled_programs
    other = Sampler(_model(seed=1))
    other.load_state(model)  # the second sampler now holds the first model's weights
    sampler.load_state(_model(seed=1))
    changed = sampler.generate(PROMPTS, GREEDY)
    assert sampler.compiled_programs == programs
    assert not np.array_equal(before.tokens, changed.tokens)
    sampler.load_state(model)
    np.testing.assert_array_equal(sampler.generate(PROMPTS, GREEDY).tokens, before.tokens)


def test_many_prompt_lengths_compile_a_handful_of_programs(model):
    compiles: list[str] = []

    def on_event(event: str, _duration: float, **_: object) -> None:
        if event == dispatch.BACKEND_COMPILE_EVENT:
            compiles.append(event)

    sampler = Sampler(model)
    keys = [jax.random.key(i) for i in range(25)]  # made before counting: key creation is a jax op too
    monitoring.register_event_duration_secs_listener(on_event)
    try:
        rng = np.random.default_rng(0)
        for length in range(1, 25):
            batch = 3 + length % 2  # batches of 3 and 4 share one bucket
            prompts = [rng.integers(0, CFG.vocab_size, size=length).tolist() for _ in range(batch)]
            # temperature and stop ids are run-time inputs: changing them compiles nothing new
            config = SamplingConfig(
                temperature=0.5 + length / 30, max_new_tokens=4 + length % 5, stop_token_ids=(length,)
            )
            sampler.generate(prompts, config, keys[length])
    finally:
        monitoring.unregister_event_duration_listener(on_event)
    # 24 calls, 24 prompt lengths: 2 length buckets (16, 24) x 1 batch bucket (4) x (prefill, decode); every
    # max_new_tokens (4..8) falls in the one new-token bucket (16)
    assert sampler.compiled_programs == 2 * 2
    assert len(compiles) == sampler.compiled_programs  # jax compiled nothing behind the sampler's back
    assert {r.kind for r in sampler.compile_log} == {"prefill", "decode"}


def test_compiler_options_reach_every_program_and_change_no_result(model):
    """Each program compiles with the options measured for its batch bucket (on CPU, batches of 8 and up:
    no YNNPACK fusions); XLA's defaults (``compiler_options={}``) give the same greedy tokens and log-probs
    within f32 rounding."""
    platform = jax.devices()[0].platform
    prompts = PROMPTS * 6  # a batch bucket of 32 rows
    tuned, plain = Sampler(model), Sampler(model, compiler_options={})
    assert tuned.compiler_options(16) == sampler_compiler_options(platform, 16)
    assert tuned.compiler_options(1) == sampler_compiler_options(platform, 1)
    assert plain.compiler_options(16) == {}
    got, ref = tuned.generate(prompts, GREEDY), plain.generate(prompts, GREEDY)
    np.testing.assert_array_equal(got.tokens, ref.tokens)
    np.testing.assert_allclose(got.logprobs, ref.logprobs, atol=1e-5)
    if sampler_compiler_options(platform, 16).get("xla_cpu_experimental_ynn_fusion_type") == "":
        assert len(tuned._programs) == 2
        for program in tuned._programs.values():
            assert "__ynn_fusion" not in program.as_text()
    with pytest.raises(Exception, match="no_such_option"):
        Sampler(model, compiler_options={"no_such_option": "1"}).generate(PROMPTS, GREEDY)


def test_sampling_on_a_4x2_mesh_equals_unsharded():
    want = Sampler(_model()).generate(PROMPTS, HOT, jax.random.key(3))
    mesh = make_mesh(4, 2)
    sharded = Sampler(shard_module(_model(), mesh), mesh=mesh)
    cache, _, _, _ = sharded.prefill(PROMPTS, HOT)
    assert len(cache.k[0].sharding.device_set) == 8  # batch over data, kv heads over model
    got = sharded.generate(PROMPTS, HOT, jax.random.key(3))
    np.testing.assert_array_equal(got.tokens, want.tokens)
    chex.assert_trees_all_close(got.logprobs, want.logprobs, atol=1e-5)

"""Logical-axis rules as a context, the fsdp mesh axis, and divisibility as an error (8 fake CPU devices; the
32-device fsdp x model train step runs in a subprocess: ``python test_sharding_rules.py fsdp OUT_DIR``)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rl_jax.models import KVCache, ModelConfig, Transformer
from rl_jax.sharding import (
    DEFAULT_RULES,
    axis_rules,
    batch_shards,
    constrain,
    current_rules,
    logical_to_spec,
    make_mesh,
    mesh_from_shape,
    parse_mesh_shape,
    parse_rule_overrides,
    shard_module,
    with_overrides,
)

HERE = Path(__file__).resolve()
TRAIN_TESTS = HERE.parent / "train"

# 4 query heads over 2 KV heads: the KV heads divide a model axis of 2, not one of 4
GQA = ModelConfig(
    family="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
    num_kv_heads=2, head_dim=8, tie_word_embeddings=True, max_position_embeddings=128,
)
NO_MLP_SPLIT = with_overrides(DEFAULT_RULES, {"mlp": None})


def _model(seed: int = 0) -> Transformer:
    return Transformer(GQA, rngs=nnx.Rngs(seed))


# ------------------------------------------------------------------------------------------ rules context


def test_rules_context_nests_and_restores():
    assert current_rules() == DEFAULT_RULES
    with axis_rules(NO_MLP_SPLIT):
        assert dict(current_rules())["mlp"] is None
        with axis_rules(DEFAULT_RULES):
            assert dict(current_rules())["mlp"] == "model"
        assert dict(current_rules())["mlp"] is None
    assert current_rules() == DEFAULT_RULES


def test_rules_context_lays_out_parameters():
    mesh = make_mesh(4, 2)
    default = shard_module(_model(), mesh)
    with axis_rules(NO_MLP_SPLIT):
        unsplit = shard_module(_model(), mesh)
    assert default.layers[0].w_gate[...].sharding.spec == P("data", "model")
    assert unsplit.layers[0].w_gate[...].sharding.spec == P("data", None)
    assert unsplit.layers[0].w_gate[...].addressable_shards[0].data.shape == (8, 64)  # hidden / 4, mlp whole
    assert unsplit.layers[0].wq[...].sharding.spec == P("data", "model", None)  # other rules unchanged


def test_rules_context_lays_out_constrained_activations():
    mesh = make_mesh(4, 2)
    x = jnp.arange(8 * 4 * 64, dtype=jnp.float32).reshape(8, 4, 64)

    @jax.jit
    def hidden(x: jax.Array) -> jax.Array:
        return constrain(x * 2, ("batch", "length", "mlp"))

    with jax.set_mesh(mesh):
        split = hidden(x)
    with jax.set_mesh(mesh), axis_rules(NO_MLP_SPLIT):
        whole = jax.jit(lambda x: constrain(x * 2, ("batch", "length", "mlp")))(x)
    assert split.sharding.is_equivalent_to(NamedSharding(mesh, P("data", None, "model")), 3)
    assert whole.sharding.is_equivalent_to(NamedSharding(mesh, P("data", None, None)), 3)
    chex.assert_trees_all_close(split, whole, x * 2)


def test_fsdp_is_the_data_axis_on_a_two_axis_mesh():
    """``DxM`` keeps today's layout (weights' hidden dimension over data); ``DxFxM`` puts it on fsdp and the
    batch over data and fsdp."""
    assert logical_to_spec(("embed", "mlp"), mesh_axis_names=("data", "model")) == P("data", "model")
    assert logical_to_spec(("batch", "length"), mesh_axis_names=("data", "model")) == P("data", None)
    assert logical_to_spec(("embed", "mlp"), mesh_axis_names=("data", "fsdp", "model")) == P("fsdp", "model")
    assert logical_to_spec(("batch",), mesh_axis_names=("data", "fsdp", "model")) == P(("data", "fsdp"))
    # a mesh axis is used once per spec: the batch takes data and fsdp, the weights' hidden dimension nothing
    assert logical_to_spec(("batch", "embed"), mesh_axis_names=("data", "fsdp", "model")) == P(
        ("data", "fsdp"), None
    )
    mesh = make_mesh(2, 2, fsdp=2)
    assert mesh.axis_names == ("data", "fsdp", "model") and batch_shards(mesh) == 4
    model = shard_module(_model(), mesh)
    assert model.layers[0].wq[...].sharding.spec == P("fsdp", "model", None)
    assert model.embed[...].sharding.spec == P("model", "fsdp")


def test_mesh_specs_parse_with_two_or_three_axes():
    assert parse_mesh_shape("8x4") == (8, 4)
    assert parse_mesh_shape("2x4x4") == (2, 4, 4)
    for bad in ("8", "2x2x2x2", "ax4", "8by4"):
        with pytest.raises(ValueError, match="DATAxMODEL or DATAxFSDPxMODEL"):
            parse_mesh_shape(bad)
    with pytest.raises(ValueError, match=">= 1"):
        parse_mesh_shape("0x4")
    assert dict(mesh_from_shape((1, 2, 4)).shape) == {"data": 1, "fsdp": 2, "model": 4}
    assert dict(mesh_from_shape((4, 2)).shape) == {"data": 4, "model": 2}


@dataclasses.dataclass(frozen=True)
class _HostDevice:
    """What mesh building reads of a device of a multi-process run."""

    id: int
    process_index: int
    platform: str = "cpu"
    device_kind: str = "cpu"
    slice_index: int = 0


@pytest.mark.parametrize(("data", "fsdp", "model"), [(2, 4, 2), (1, 8, 2)])
def test_batch_rows_split_over_processes_in_order_and_model_stays_within_one(data, fsdp, model):
    """Over 2 processes (devices interleaved): the batch rows, data x fsdp with data outer, go to the processes
    in order, half each, whether data spans the processes (2x4x2) or only fsdp does (1x8x2); each model row
    lies within one process."""
    devices = [_HostDevice(i, i % 2) for i in range(data * fsdp * model)]
    mesh = make_mesh(data, model, devices, fsdp=fsdp)
    assert dict(mesh.shape) == {"data": data, "fsdp": fsdp, "model": model}
    rows = np.vectorize(lambda d: d.process_index)(mesh.devices).reshape(data * fsdp, model)
    assert (rows == rows[:, :1]).all()  # every model row within one process
    half = data * fsdp // 2
    assert (rows[:half] == 0).all() and (rows[half:] == 1).all()
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        make_mesh(1, 2, devices[:6], fsdp=3)


def test_main_entry_point_takes_a_three_axis_mesh_and_rules():
    from experiments.grpo_corecraft import parse_args

    cfg, _, _ = parse_args(["--preset", "tiny", "--mesh", "2x4x4", "--set", "train.sharding_rules=vocab=none"])
    assert cfg.train.mesh_shape == (2, 4, 4)
    assert dict(cfg.train.logical_rules)["vocab"] is None
    assert dict(cfg.train.logical_rules)["kv_heads"] == "model"  # --set replaced the preset's rules
    with pytest.raises(SystemExit):
        parse_args(["--preset", "tiny", "--set", "train.sharding_rules=vocab=tensor"])


def test_overrides_replace_a_rule_in_place_and_append_new_names():
    rules = with_overrides((("embed", "fsdp"), ("mlp", "model"), ("embed", "data")), {"embed": None, "x": "model"})
    assert rules == (("embed", None), ("mlp", "model"), ("embed", None), ("x", "model"))
    assert dict(rules)["embed"] is None


def test_main_job_refuses_heads_that_do_not_divide_in_one_line(tmp_path):
    """The tiny policy's 2 KV heads on a model axis of 4, with the preset's rule for them removed."""
    argv = ["experiments/grpo_corecraft.py", "--preset", "tiny", "--mesh", "1x2x4", "--set", "train.sharding_rules=",
            "--out", str(tmp_path / "run")]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run([sys.executable, *argv], cwd=HERE.parents[2], capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "error: parameter ['layers'][0]['wk']: dimension 1 (logical axis 'kv_heads')" in proc.stderr


def test_rule_overrides_are_checked():
    assert parse_rule_overrides(["kv_heads=none", "batch=data+fsdp", "embed = fsdp"]) == {
        "kv_heads": None, "batch": ("data", "fsdp"), "embed": "fsdp",
    }
    for bad in ("kv_heads", "kv_heads=tensor", "batch=data+data", "=model", "kv_head=none"):
        with pytest.raises(ValueError):
            parse_rule_overrides([bad])


# ------------------------------------------------------------------------------------------ divisibility


def test_a_parameter_that_does_not_divide_is_an_error_naming_it():
    mesh = make_mesh(2, 4)  # model axis 4; the 2 KV heads do not divide it
    with pytest.raises(ValueError, match=r"parameter \['layers'\]\[0\]\['wk'\]: dimension 1 \(logical axis "
                                         r"'kv_heads'\) of shape \(32, 2, 8\) is 2.*'model' of size 4"):
        shard_module(_model(), mesh)
    with axis_rules(with_overrides(DEFAULT_RULES, {"kv_heads": None})):  # the explicit choice: replicate them
        model = shard_module(_model(), mesh)
    assert model.layers[0].wk[...].sharding.spec == P("data", None, None)
    assert model.layers[0].wq[...].sharding.spec == P("data", "model", None)


def test_a_cache_buffer_or_activation_that_does_not_divide_is_an_error():
    mesh = make_mesh(4, 2)
    with pytest.raises(ValueError, match=r"KV cache keys of layer 0: dimension 0 \(logical axis 'batch'\).*"
                                         r"is 3.*'data' of size 4"):
        KVCache.init(GQA, 3, 16, mesh=mesh)
    with jax.set_mesh(mesh), pytest.raises(ValueError, match=r"activation \('batch', 'mlp'\).*'mlp'.*is 3"):
        jax.jit(lambda x: constrain(x, ("batch", "mlp")))(jnp.zeros((4, 3)))


# ------------------------------------------------------------------------------------------ programs traced later


def test_train_step_traces_under_the_rules_it_was_built_with():
    """jit traces at the first call: a step built under rules must trace under them when called outside.
    Sequences split over the model axis cannot hold the 30 positions this batch has: only a step that kept
    its rules refuses it."""
    sys.path.insert(0, str(TRAIN_TESTS))
    from train_helpers import random_trajectories, train_config

    from rl_jax.train import collate, create_train_state, shard_batch

    mesh = make_mesh(4, 2)
    tokens, masks, olds, adv = random_trajectories(0, 8)
    batch = collate(tokens, masks, olds, adv, buckets=(31,))
    with axis_rules(with_overrides(DEFAULT_RULES, {"length": "model"})):
        _, state, step = create_train_state(_model(), train_config(), mesh)
    with pytest.raises(ValueError, match=r"logical axis 'length'.*is 31.*'model' of size 2"):
        step(state, shard_batch(batch, mesh))


def test_sampler_traces_under_the_rules_it_was_built_with():
    """As for the train step: a decode step's one new position cannot split over the model axis, so a sampler
    that kept its rules refuses to compile; one built under the default rules samples."""
    from rl_jax.sampling import Sampler, SamplingConfig

    mesh = make_mesh(4, 2)
    with axis_rules(with_overrides(DEFAULT_RULES, {"length": "model"})):
        sampler = Sampler(shard_module(_model(), mesh), mesh=mesh, min_shared_prefix=None)
    config = SamplingConfig(temperature=1.0, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"logical axis 'length'.*'model' of size 2"):
        sampler.generate([[3, 4, 5, 6]], config, jax.random.key(0))


# ------------------------------------------------------------------------------------------ 32 devices


@pytest.mark.slow
def test_fsdp_by_model_meshes_of_32_devices_equal_one_device(tmp_path):
    """One AdamW step of a tiny model on 1x8x4 and 4x4x2 (and 1x8x4 in two micro-batches): the same loss,
    gradient norm, optimizer moments and update as on one device, with the weights split over fsdp."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=32", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, str(HERE), "fsdp", str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    sys.path.insert(0, str(TRAIN_TESTS))
    from train_helpers import assert_same_step, train_config

    lr = train_config().optimizer.learning_rate
    start = dict(np.load(tmp_path / "start_state.npz"))
    want_state = dict(np.load(tmp_path / "single_state.npz"))
    want_metrics = dict(np.load(tmp_path / "single_metrics.npz"))
    layouts = json.loads((tmp_path / "layouts.json").read_text())
    for name in ("1x8x4", "4x4x2", "1x8x4_micro2"):
        got_state = dict(np.load(tmp_path / f"{name}_state.npz"))
        got_metrics = dict(np.load(tmp_path / f"{name}_metrics.npz"))
        chex.assert_trees_all_close(got_metrics["loss"], want_metrics["loss"], rtol=1e-5)
        params = [k for k in want_state if k.startswith(".params")]
        update = {k: got_state[k] - start[k] for k in params}
        want_update = {k: want_state[k] - start[k] for k in params}
        chex.assert_trees_all_close(update, want_update, atol=1e-2 * lr, rtol=0)
        assert_same_step(got_state, got_metrics, want_state, want_metrics, lr)
    # the weights really are split over fsdp and model, the batch over data and fsdp
    assert layouts["1x8x4"]["wq"] == ["fsdp", "model", None] and layouts["1x8x4"]["wq_devices"] == 32
    assert layouts["4x4x2"]["wq"] == ["fsdp", "model", None] and layouts["4x4x2"]["wq_shard"] == [8, 2, 8]
    assert layouts["4x4x2"]["batch"] == [["data", "fsdp"], None]


def _fsdp_mode(out_dir: Path) -> None:
    """One step on one device and on fsdp x model meshes of 32 devices; save states, metrics and layouts."""
    sys.path.insert(0, str(TRAIN_TESTS))
    from train_helpers import random_batch, state_arrays, tiny_model, train_config

    from rl_jax.train import create_train_state, shard_batch

    assert jax.device_count() == 32, jax.device_count()
    batch = random_batch(0)
    _, start, _ = create_train_state(tiny_model(), train_config())
    np.savez(out_dir / "start_state.npz", **state_arrays(start))
    layouts = {}
    runs = (("single", (1, 1), 1), ("1x8x4", (1, 8, 4), 1), ("4x4x2", (4, 4, 2), 1),
            ("1x8x4_micro2", (1, 8, 4), 2))
    for name, shape, micro in runs:
        mesh = mesh_from_shape(shape)
        _, state, step = create_train_state(tiny_model(), train_config(micro_batches=micro), mesh)
        placed = shard_batch(batch, mesh)
        state, metrics = step(state, placed)
        wq = state.params["layers"][0]["wq"].get_value()
        layouts[name] = {
            "wq": list(wq.sharding.spec), "wq_devices": len(wq.sharding.device_set),
            "wq_shard": list(wq.addressable_shards[0].data.shape),
            "batch": [list(a) if isinstance(a, tuple) else a for a in placed.tokens.sharding.spec],
        }
        np.savez(out_dir / f"{name}_metrics.npz", **{k: np.asarray(v) for k, v in metrics.items()})
        np.savez(out_dir / f"{name}_state.npz", **state_arrays(state))
    (out_dir / "layouts.json").write_text(json.dumps(layouts))
    print("OK", flush=True)


if __name__ == "__main__":
    mode, out = sys.argv[1], Path(sys.argv[2])
    if mode != "fsdp":
        raise SystemExit(f"unknown mode {mode!r}")
    _fsdp_mode(out)

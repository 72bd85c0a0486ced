"""The CPU backend settings entry points apply: added once, the user's own flags win, accepted by XLA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from rl_jax.runtime import (
    CPU_FLAGS,
    SAMPLER_CPU_OPTIONS,
    platform_of,
    sampler_compiler_options,
    tune_cpu_backend,
)

REPO = Path(__file__).resolve().parents[2]


def test_flags_are_added_once_and_the_users_own_setting_wins():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4 --xla_cpu_use_onednn=false"}
    added = tune_cpu_backend(env, jaxlib_version="0.10.2")
    assert added == ["--xla_cpu_experimental_ynn_fusion_type=dot"]
    assert env["XLA_FLAGS"].split() == [
        "--xla_force_host_platform_device_count=4", "--xla_cpu_use_onednn=false",
        "--xla_cpu_experimental_ynn_fusion_type=dot",
    ]
    assert tune_cpu_backend(env, jaxlib_version="0.10.2") == []  # idempotent
    empty: dict[str, str] = {}
    assert tune_cpu_backend(empty, jaxlib_version="0.10.2") == list(CPU_FLAGS)
    assert empty["XLA_FLAGS"] == " ".join(CPU_FLAGS)


def test_an_untested_jaxlib_gets_no_flags():
    env: dict[str, str] = {}
    assert tune_cpu_backend(env, jaxlib_version="0.11.0") == []
    assert "XLA_FLAGS" not in env


def test_sampler_options_are_for_the_measured_cpu_jaxlib_and_batches_only():
    assert sampler_compiler_options("cpu", 16, "0.10.2") == SAMPLER_CPU_OPTIONS
    assert sampler_compiler_options("cpu", 8, "0.10.2") == SAMPLER_CPU_OPTIONS
    assert sampler_compiler_options("cpu", 64, "0.10.2") == SAMPLER_CPU_OPTIONS
    assert sampler_compiler_options("cpu", 4, "0.10.2") == {}  # measured slower there: XLA's defaults
    assert sampler_compiler_options("cpu", 16, "0.11.0") == {}
    assert sampler_compiler_options("gpu", 16, "0.10.2") == {} and sampler_compiler_options("tpu", 16) == {}


def test_xla_accepts_the_flags_and_computes_the_same():
    """XLA aborts on a flag it does not know: a fresh process with the flags must start and compute."""
    code = (
        "import json, jax, jax.numpy as jnp\n"
        "from rl_jax.runtime import tune_cpu_backend\n"
        "added = tune_cpu_backend()\n"
        "x = jnp.arange(4096.0).reshape(64, 64) / 4096\n"
        "y = jax.jit(lambda a: jax.nn.logsumexp(a @ a.T, axis=-1))(x)\n"
        "print(json.dumps({'added': added, 'y': y.tolist()}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    tuned = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert tuned.returncode == 0, tuned.stderr[-2000:]
    result = json.loads(tuned.stdout.strip().splitlines()[-1])
    import jax
    import jax.numpy as jnp
    import numpy as np

    x = jnp.arange(4096.0).reshape(64, 64) / 4096
    np.testing.assert_allclose(result["y"], np.asarray(jax.nn.logsumexp(x @ x.T, axis=-1)), rtol=1e-5)
    if jax.lib.__version__.startswith("0.10."):
        assert result["added"] == list(CPU_FLAGS)


def test_platform_of_names_where_a_tree_s_arrays_live():
    import jax
    import jax.numpy as jnp

    assert platform_of({"w": jnp.zeros(3), "n": 4}) == "cpu"
    assert platform_of({"n": 4}) == jax.default_backend()  # nothing placed: the default backend

"""Multi-host start-up: wire ``jax.distributed.initialize`` from arguments or the environment.

Call ``initialize_distributed`` once per process, before anything touches a device (the main entry point,
``experiments/grpo_corecraft.py``, does), then build the mesh with ``rl_jax.sharding.make_mesh`` as usual: it
spans every process's devices, keeping the model axis within a host and the batch rows (data x fsdp) across
hosts. Each process feeds its own rows of the batch (``rl_jax.train.batch.shard_batch``) and the jitted step
runs as one program over the global mesh.

Settings come from the keyword arguments, else from the environment:

    RL_JAX_COORDINATOR=10.0.0.1:8476   # host:port of process 0
    RL_JAX_NUM_PROCESSES=4
    RL_JAX_PROCESS_ID=0..3

On TPU pods and SLURM clusters JAX discovers all three by itself: call with nothing set and it does. On CPU
(tests, a workstation) cross-process collectives need gloo, which this turns on.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import jax


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DistributedConfig:
        env = os.environ if env is None else env
        num = env.get("RL_JAX_NUM_PROCESSES")
        pid = env.get("RL_JAX_PROCESS_ID")
        return cls(
            coordinator_address=env.get("RL_JAX_COORDINATOR") or None,
            num_processes=int(num) if num else None,
            process_id=int(pid) if pid else None,
        )

    @property
    def is_multi_process(self) -> bool:
        return self.num_processes is not None and self.num_processes > 1

    def validate(self) -> None:
        given = [self.coordinator_address is not None, self.num_processes is not None, self.process_id is not None]
        if any(given) and not all(given):
            raise ValueError(
                "multi-host needs all of coordinator address, number of processes and process id "
                f"(got {self}); set RL_JAX_COORDINATOR, RL_JAX_NUM_PROCESSES, RL_JAX_PROCESS_ID"
            )
        if self.num_processes is not None and self.process_id is not None and not (
            0 <= self.process_id < self.num_processes
        ):
            raise ValueError(f"process id {self.process_id} is outside [0, {self.num_processes})")


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto_detect: bool = False,
    initialization_timeout: int | None = None,
) -> DistributedConfig:
    """Join the process group; a no-op for a single process. Returns the settings used.

    Arguments win over the environment. ``auto_detect=True`` with nothing set lets JAX discover the cluster
    (TPU pod, SLURM, Open MPI). ``initialization_timeout`` (seconds; JAX's default is 300) bounds the wait
    for the other processes to connect, so a missing peer fails the start instead of hanging it.
    """
    timeout = {} if initialization_timeout is None else {"initialization_timeout": initialization_timeout}
    env = DistributedConfig.from_env()
    cfg = DistributedConfig(
        coordinator_address=coordinator_address or env.coordinator_address,
        num_processes=num_processes if num_processes is not None else env.num_processes,
        process_id=process_id if process_id is not None else env.process_id,
    )
    cfg.validate()
    if cfg.is_multi_process:
        if jax.config.jax_platforms in (None, "", "cpu"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=cfg.coordinator_address,
            num_processes=cfg.num_processes,
            process_id=cfg.process_id,
            **timeout,
        )
    elif auto_detect and cfg.coordinator_address is None:
        jax.distributed.initialize(**timeout)
    return cfg

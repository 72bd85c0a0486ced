"""Shared test setup.

JAX reads XLA_FLAGS once, at start-up: give the whole test process 8 fake CPU devices so sharding tests can
build meshes such as 4x2. Tests that need more devices (8x4) run a subprocess with their own flag.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

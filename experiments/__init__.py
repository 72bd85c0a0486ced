"""Experiments: the only layer that knows both corecraft (the environment) and rl_jax (the trainer)."""

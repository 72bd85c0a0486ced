"""CoreCraft for RL trainers: ``CoreCraftEnv`` opens episodes (in process or on a ``corecraft serve`` fleet),
grades them by their rubrics where their worlds live, and ends them (``rl_jax.rollout.Environment``)."""

from corecraft.env.environment import CoreCraftEnv, HttpFleet, to_trajectory

__all__ = ["CoreCraftEnv", "HttpFleet", "to_trajectory"]

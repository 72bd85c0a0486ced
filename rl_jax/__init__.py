"""rl_jax: GRPO with adaptive clipping for tool-using LLM agents, in JAX.

Knows environments only through MCP (rl_jax.rollout) and a small scorer interface; never imports corecraft.
"""

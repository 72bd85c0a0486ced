"""Rubric judging: deterministic checks over the final world and trajectory, and an LLM judge."""

"""The scenario families, by category; importing this package registers them all."""

from corecraft.tasks.families import communication, reasoning, retrieval, workflow

__all__ = ["communication", "reasoning", "retrieval", "workflow"]

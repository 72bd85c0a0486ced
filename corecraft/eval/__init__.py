"""Evaluation harness: an agent loop over any OpenAI-compatible chat API, metrics, the HTML report."""

"""The OpenAI-compatible server: routes, batching, limits."""

"""Export: merged safetensors, GGUF, Ollama, and pushing to a hub."""

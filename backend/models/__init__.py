"""Loading models (embedded, GGUF, folders, hub ids), their chat templates, their decoder layers and per-model settings."""

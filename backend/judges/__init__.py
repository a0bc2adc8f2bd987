"""Role-adherence judges on the paper's 0-3 scale: sentence embeddings offline, an OpenAI-compatible model when configured."""

"""Built persona spaces on disk: writing and loading them, and what `info` reports."""

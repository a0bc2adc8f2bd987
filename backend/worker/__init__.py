"""The model worker: one loaded model, many chat sessions, a live cap slider, every token kept in SQLite."""

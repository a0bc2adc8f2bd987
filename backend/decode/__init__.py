"""The one decode engine: batched rows on a static KV cache, compiled steps, and chat replies on top of it."""

"""How a model's products run fast on a CPU: few-row linear layers, int8 weights, the serving thread's OpenMP pool."""

"""Experiments on a built space: the cap evaluation and the drift scenarios."""

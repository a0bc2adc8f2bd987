"""Hooks on the residual stream: the library's interventions and the per-row live controls they are built on."""

"""Torch-free views the UI reads: a space's manifest schema and plain lists, the cap preset, the trade-off rule."""

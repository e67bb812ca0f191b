"""Numerics shared by models, methods and evaluators: losses, metrics, k-means."""

"""Metrics, reports and the eval recipe."""

"""Helpers shared by several test modules (one module per area)."""

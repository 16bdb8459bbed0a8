"""Applications built on the engine: each imports tasks, training, inference and serving
downward, and nothing in the engine imports them (tests/test_architecture.py checks it)."""

"""The training engine: precision, optimizer, loop, tracking, and the train recipe."""

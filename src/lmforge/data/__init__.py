"""Reading, cleaning, splitting, tokenizing and batching examples."""

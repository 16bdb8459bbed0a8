"""Language-model training on raw text or conversations (see recipe.py)."""

"""Locating and loading pretrained models and tokenizers."""

"""Generative fine-tuning and text generation: chat records, chat templates, sampling, metrics."""

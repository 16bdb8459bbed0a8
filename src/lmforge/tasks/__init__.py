"""Tasks (sequence classification, ...): labels, model head, metrics, decoding."""

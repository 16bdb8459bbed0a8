"""Exports of trained models (ONNX, int8), each checked against the original."""

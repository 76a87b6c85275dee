"""Shared pieces: table I/O, errors, metrics, model files, progress lines."""

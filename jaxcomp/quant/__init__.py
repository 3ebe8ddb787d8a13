"""Quantization, binarization and parameter sharing."""

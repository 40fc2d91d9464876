"""Distillation: losses (one family per module) and the training engine."""

"""Stages and the engine that sequences them over a run directory."""

"""Workstation side: timm teachers and students (needs torch + timm)."""

"""Alembic scripts, shipped inside the wheel as ``coverservice.migrations``."""

"""Prefect flows (wiring only) and the tunegate CLI."""

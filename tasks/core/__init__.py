"""Plumbing every stage shares: config, paths, file I/O, the stage shell, data reading, metrics."""

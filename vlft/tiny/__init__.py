"""Tiny random-init checkpoints in the official layouts, for tests and the demo (no model hub needed)."""

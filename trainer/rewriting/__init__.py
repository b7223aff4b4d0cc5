"""Prompt -> model -> parsed rewrite: tasks, first-pass feedback, answer parsing, in-process and served backends."""

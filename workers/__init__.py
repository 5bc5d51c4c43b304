"""Worker processes built on Popoto."""

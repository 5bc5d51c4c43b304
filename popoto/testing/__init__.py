"""Test and demo helpers for Popoto (an embedded, throwaway Redis server)."""

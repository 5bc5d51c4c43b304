"""The engine: scripts, the write batch, step I/O, query sources and unique claims."""

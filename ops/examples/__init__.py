"""The example deployment of the repository: the demos (``make demo``), the example web
app (``make run``) and their models and stream handlers. Not installed with the wheel."""

"""Operations: the operator CLI ``popoto-ops`` (``cli``, ``cli_dashboard``, ``progress``,
``asgi``), installed as ``popoto.ops``; and, in the repository only (not in the wheel),
the benchmark (``bench``) and the example deployment (``examples``: demos, web app)."""

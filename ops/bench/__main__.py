"""``python -m popoto.ops.bench``: run the benchmark and write bench/results.json."""

from .runner import main

raise SystemExit(main())

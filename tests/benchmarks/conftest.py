"""tests/benchmarks: the benchmarks' own tests. The pytest-benchmark suite in speed/ is collected only when named
(``pytest tests/benchmarks/speed --benchmark-only``); ``test_pytest_benchmark_suite_runs`` runs it once, small."""
collect_ignore = ["speed"]

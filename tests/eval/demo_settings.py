"""Settings of the session's generated demo benchmarks, shared by the eval tests and their fixtures."""

SAMPLES = 8  # generated questions per benchmark

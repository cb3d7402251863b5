"""Scripts that measure; never run by the test suite. What they share is in benchmarks.common."""

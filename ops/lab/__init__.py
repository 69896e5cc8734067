"""Test equipment, apart from the operator tools in `ops/`: benchmarks (bench), the
fault suites (chaos, cluster), the isolated throwaway stack they run on, and the
webhook receiver they deliver to. Nothing in production imports from here."""

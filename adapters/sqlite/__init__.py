"""A MetricsStore in one SQLite file."""

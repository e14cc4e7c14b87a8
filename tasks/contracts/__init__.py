"""Data contracts: Great Expectations suites, drift, split leakage, and their reports."""

"""Helpers for tests: golden weight rule, tolerances, generated files. Test-only code."""

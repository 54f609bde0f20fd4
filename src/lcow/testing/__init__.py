"""Conformance suites shipped with lcow: the graphtest port and backend checks."""

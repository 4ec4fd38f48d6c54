"""Operator and developer tools: the command line, the demo, the benchmark and the audit."""

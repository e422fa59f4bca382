"""Benchmarks: `python -m benchmarks run [--only NAME] [--json PATH]` prints a table and writes JSON.

Every figure is a median over repeats after a warm-up; speed-ups are ratios of figures measured in
the same run. Nothing here is asserted in tests: the targets are read off this output.
"""

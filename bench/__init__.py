"""The benchmark: the fleet's pipeline against Demucs' own API, side by side.

Run ``make bench`` or ``python -m bench --help``; bench/README.md says what each number
means. A script, not a test: nothing here is imported by ``consumer`` or the tests.
"""

"""The pure core: DAG specs, validation, expressions, retry math and the run state machine.

Nothing in this package performs I/O, reads the clock or draws random numbers; time and
identity come in as arguments so every decision can be replayed and property-tested.
"""

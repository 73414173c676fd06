"""The engine: the coordinator loop, the scheduler, timers, the reconciler and submission.
It talks to the world only through `flowforge.ports`."""

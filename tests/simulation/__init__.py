"""A deterministic crash simulator for the engine (``python -m tests.simulation``).

One seed gives one *scenario*: a few task programs (small JSON ASTs that one generic task walks,
``grammar``/``generator``), the outside events that hit them at fixed virtual times (token
completions and cancellations, run cancellations), and a fault schedule (processes dying at a
storage call, a stalled process whose lease runs out, storage errors, a blackout with no worker
alive, always-replay mode). ``reference`` predicts, without the engine, what every run returns
and how it ends; ``executor`` plays the scenario on the real engine (SQLite file or PostgreSQL
schema, a manual clock, several in-process "processes" on one database) and ``invariants``
compares the two and checks what must hold whatever the faults. ``shrink`` reduces a failing
scenario to a small one that still fails.

Time is virtual: the clock moves only when every live process is idle, to the next instant
something is due, so faults (which only ever *delay* a run by a few milliseconds) cannot change
what the reference predicts. Scenarios whose outcome would depend on such a delay (two instants
closer than ``grammar.WINDOW_MS`` that one of them may cross) are rejected by the generator.
"""

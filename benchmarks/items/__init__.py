"""The measured items, one module each, numbered as ``run.py --only`` numbers them.

0. ``baseline``: the physical limit (plain sqlite3 or asyncpg, no engine).
1. ``trivial``: trivial runs per second.
2. ``token_wait``: token-wait runs per second (and the throughput measurement items 1 and 8
   use too).
3. ``latency``: resume latency, in-process, cross-process and through the CLI.
4. ``memory``: the worker's RSS with runs WAITING.
5. ``timers``: how late tokens due the same millisecond time out.
6. ``replay``: the extra resume cost of journaled steps.
7. ``dbos``: the same workloads on DBOS Transact.
8. ``capacity``: token-wait runs with 1, 2 and 4 worker processes.

Each module's ``run`` measures its item once on ``ctx.backend`` and adds the rows to the
results of that backend; ``notes`` (where there is one) gives the lines printed under the
table.
"""

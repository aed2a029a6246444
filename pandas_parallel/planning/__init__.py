"""Plan: how a call runs, priced before any worker starts, and corrected by
what calls really cost.

- :mod:`.costs`: the cost model, pure functions of what is known;
- :mod:`.memory`: what earlier calls cost, one object under one lock;
- :mod:`.planner`: :func:`plan` (serial or parallel, the backend, the
  chunks) and :func:`learn` (the memory's only writer).
"""

from pandas_parallel.planning.costs import SERVER_START_SECONDS, Estimate
from pandas_parallel.planning.memory import MEMORY, Known
from pandas_parallel.planning.planner import Plan, Spent, learn, plan, plan_known

__all__ = ["MEMORY", "SERVER_START_SECONDS", "Estimate", "Known", "Plan", "Spent", "learn",
           "plan", "plan_known"]

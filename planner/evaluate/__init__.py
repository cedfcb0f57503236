"""Evaluating candidates against production: how close each answer is, what the evidence per
(task type, candidate) says, where each task type's traffic should go, and what that does to a
month of traffic.

- :mod:`planner.evaluate.scoring` — scorers per task type and the pairwise LLM judge;
- :mod:`planner.evaluate.verdict` — outcomes, production's ceiling, the looks and the error
  budget, and the sequential rule (with :mod:`planner.evaluate.intervals`: exact bounds, BCa);
- :mod:`planner.evaluate.evidence` — observations summarized per (task type, candidate), with
  intervals;
- :mod:`planner.evaluate.decision` — the decision rule, the floor sweep, stickiness, other
  routing rules;
- :mod:`planner.evaluate.projection` — cost, quality, latency and energy of a month; the frontier
  and the risks.

Plain functions over plain data: no I/O. May import: the ``planner`` root modules and
:mod:`planner.models` (device figures).
"""

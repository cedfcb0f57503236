"""Replaying logged requests through candidates, and what that costs.

- :mod:`planner.replay.protocol` — :class:`ReplayRequest`, :class:`ReplayResult` and the backend
  interface every candidate speaks;
- :mod:`planner.replay.relay` — any OpenAI-compatible endpoint over httpx (streaming, retries,
  auth, breaker, budget): the project's one relay client;
- :mod:`planner.replay.wire` — the chat-completions wire format as a client parses it;
- :mod:`planner.replay.completion` — one completion at a time through a relay (judge, annotator);
- :mod:`planner.replay.ratelimit` — rpm/tpm windows, the circuit breaker, the money budget;
- :mod:`planner.replay.engine` — a sample through one backend with the cache keys that make runs
  resumable;
- :mod:`planner.replay.local` — the local backend over :mod:`planner.models.runtime`;
- :mod:`planner.replay.shards` — a local candidate's work in shards that can run anywhere;
- :mod:`planner.replay.freshness` — when a relay's answers expire, tonight's renewal slice, and
  what a relay serves now.

May import: the ``planner`` root modules and :mod:`planner.models`.
"""

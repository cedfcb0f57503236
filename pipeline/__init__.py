"""The stages of a run composed from one loaded settings object, without Prefect.

``flows/`` (Prefect flows and tasks, the CLI) sits above this package and wraps these functions;
the domain packages (``warehouse``, ``classifiers``, ``planner``) sit below. A stage function
takes the :class:`planner.settings.PlannerSettings` it was handed (settings are loaded once, by
the caller), opens what it needs (the warehouse, a relay client) and returns plain data.

Modules, in the order a nightly run uses them:

- :mod:`pipeline.stage` — how a composition runs its steps (directly, or as Prefect tasks);
- :mod:`pipeline.classify` — label, train, export, predict, the plan page's classifier figures;
- :mod:`pipeline.replay` — sample, relay lanes and local-model shards, the replay summary;
- :mod:`pipeline.current` — which replays are evidence now (current fingerprints, fresh relay
  answers) and the plan's notes on the rest;
- :mod:`pipeline.plan` — score, evidence, decision, projection, artifacts and the HTML plan;
- :mod:`pipeline.nightly` — the run's bookkeeping: logs to ingest, classifier due, scoped
  history, attention signals (deployed routes re-measured, drift between windows), the webhook;
- :mod:`pipeline.demo` — the demo's configuration, models and relay.

May import: ``planner``, ``classifiers``, ``warehouse``, ``demo``; never ``flows`` or Prefect.
"""

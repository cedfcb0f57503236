"""The demo's data: a seeded generator of realistic production chat logs (:mod:`demo.logs`) and
the vocabulary it draws from (``demo/vocabulary.json``), for ``migration-planner demo``, the tests
and the benchmarks. Nothing in the product's own path depends on it.

May import: the standard library only.
"""

"""Models on the worker: ``cache`` (versions resolved and loaded), ``loading``
(fetch, verify, load), ``signature`` (checks against what a model takes),
``pipeline`` (stored chains of models) and ``introspect`` (store-time signatures)."""

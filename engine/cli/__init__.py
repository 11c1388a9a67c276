"""The ``inferis`` command: ``main`` (parser and error handling), ``serve`` (up,
worker, demo), ``models`` (model management), ``demo`` (the iris walk-through)."""

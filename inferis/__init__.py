"""inferis: model serving inside Redis.

The distribution maps the repository's top-level folders into this namespace:
``client/`` is :mod:`inferis.client`, ``engine/`` is :mod:`inferis.engine` and
``lua/`` (the Redis Functions library) is :mod:`inferis.lua`.
"""

__version__ = "0.1.0"

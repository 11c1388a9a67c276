"""What the client, the worker and the Functions library agree on, without I/O.

``defaults`` (numbers and names), ``keys`` (every key), ``errors`` (codes),
``tensor`` (the value format), ``models`` (typed metadata), ``entries``
(request records), ``replies`` (answers), ``commands`` (every FCALL) and
``backoff``. docs/PROTOCOL.md describes the same on the wire.
"""

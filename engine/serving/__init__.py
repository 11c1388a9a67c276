"""The request path, in the order a request meets it: ``worker`` (the loop),
``admission`` (entries to request records), ``collector`` (the batch window),
``executor`` and ``batching`` (checks and backend calls), ``completion``
(answers and acknowledgement). ``request`` is the one record they share."""

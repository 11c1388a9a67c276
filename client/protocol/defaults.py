"""Every number and name the client, the worker and the Functions library agree on.

One place, as rq keeps ``rq/defaults.py``: change a value here and in
``lua/inferis.lua`` (a unit test checks that the two agree), and say so in
docs/PROTOCOL.md.
"""

from __future__ import annotations

# ---------------------------------------------------------------- names

GROUP = "inferis"  # the consumer group of every request stream
MODELS_CHANNEL = "inferis:models"  # MODELSTORE / MODELDEL publish the model name here
FUNCTION_LIBRARY = "inferis"  # FUNCTION LOAD name of lua/inferis.lua

# ---------------------------------------------------------------- runs

DEFAULT_TIMEOUT_MS = 30_000  # a request's deadline when the caller names none
MAX_TIMEOUT_MS = 24 * 3600 * 1000
DEFAULT_TTL_MS = 3_600_000  # how long keys a run writes (large outputs, replies) live
MAX_TTL_MS = 10**12  # about 31 years: anything longer overflows Redis's expiry arithmetic
# How long after its deadline a caller still waits for the worker's own
# EDEADLINE answer before giving up locally (NoAnswerError).
REPLY_GRACE_S = 0.5
# Tensors up to this size travel inside the request entry and the reply, so
# neither side needs another round trip; larger ones are read by key.
INLINE_LIMIT = 256 * 1024

# How long a client's calls ride over a Redis that restarts or fails over.
RECONNECT_WINDOW_S = 15.0

# Partitions a Redis Cluster deployment spreads over its slots (keys.spread_partitions).
CLUSTER_PARTITIONS = 16

# A client coalesces concurrent runs into one MODELRUNMANY call of at most
# this many requests and about this many bytes of tensors.
MAX_CALL_REQUESTS = 256
MAX_CALL_BYTES = 8 * 1024 * 1024

# ---------------------------------------------------------------- tensors

MAX_RANK = 8
# Redis refuses bulk strings over 512 MB by default; stay well inside it.
MAX_TENSOR_BYTES = 256 * 1024 * 1024
# No Function may hold Redis for long: TENSORSET/TENSORGET ... VALUES convert at
# most this many items in Lua, and a tensor without data is zero-filled up to
# MAX_ZERO_FILL_BYTES; larger tensors travel as BLOB or RAW (plain copies).
MAX_LUA_VALUES = 262_144
MAX_ZERO_FILL_BYTES = 16 * 1024 * 1024

# ---------------------------------------------------------------- models

# Model blobs above this size are uploaded in chunks (MODELCHUNK), so no single
# command carries hundreds of megabytes.
CHUNK_SIZE = 16 * 1024 * 1024
STAGING_TTL_MS = 3_600_000  # an upload that never commits is gone after this
MAX_MODEL_NAME = 128

# ONNX Runtime graph optimization levels a version's META may name
# (``graph_optimization``), from none to all.
GRAPH_OPTIMIZATION_LEVELS = ("disabled", "basic", "extended", "all")

# ---------------------------------------------------------------- prediction cache

# Answers a model keeps cached per partition, unless its setting says otherwise:
# the count, not Redis's maxmemory policy, bounds the cache (docs/PROTOCOL.md §18).
CACHE_MAX_ENTRIES = 10_000
MAX_CACHE_ENTRIES = 10_000_000
# An answer whose encoded outputs are larger than this is not cached.
CACHE_MAX_VALUE_BYTES = INLINE_LIMIT

# ---------------------------------------------------------------- replies

REPLY_READ_COUNT = 1024  # reply entries a client reads per XREAD
REPLY_READ_BLOCK_MS = 1000
# The dead-letter stream is trimmed (MAXLEN ~) to this, unless the partition's
# {inferis:N}:limits says deadletter_maxlen.
DEADLETTER_MAXLEN = 10_000

# ---------------------------------------------------------------- audit

# A model's audit stream is trimmed (MAXLEN ~) to this, unless its
# inferis:{<name>}:limits says audit_maxlen.
AUDIT_MAXLEN = 10_000
# What the SDK writes as `by` when Redis would not say who the connection is
# (ACL WHOAMI refused).
UNKNOWN_USER = "?"
MAX_BY_BYTES = 256

# ---------------------------------------------------------------- regions

# Active-Active (docs/ACTIVE-ACTIVE.md): at most this many regions, numbered 1..15
# in the order of inferis:regions; region n numbers its versions n mod VERSION_STRIDE.
MAX_REGIONS = 15
VERSION_STRIDE = 16

# ---------------------------------------------------------------- model pools

# How long a client trusts what it read of a model's route (inferis:{M}:partition,
# the partition a pool of workers of its own serves) before it reads it again.
MODEL_ROUTE_TTL_S = 5.0

"""The durable input plane: calls through Redis Streams to workers that pull them, so a call
outlives its caller, a worker's death loses nothing, and callers never connect to workers.

This is the plane the Kubernetes provider's Deployments run (issue 7); here it is driven by
worker processes or Docker containers. The caller's side is `QueuePool`, with the interface of a
local run's pool (`submit`, `cancel`, `chunk_size`, `.session`), so the call API (`.remote`,
`.map`, `.spawn`, ...) works through it unchanged (`through_queue(fn, url)`); the worker is
`python -m runner._plane.worker`, which runs runner's own agent as a child over runner._protocol.

Keys (`_wire`), per function key F:

    rq:f:F:spec      hash: the agent's INIT spec and blobs (Target.init_message), the retry
                     policy, the lease, max_inputs. Registered by the client; read once by each
                     worker at start (a changed function is a new key: workers never reload).
    rq:f:F:in        stream of inputs, consumer group `workers`. Entry: h = (input id, reply
                     stream, method, kind, weight, retries used, store?, enqueued at, deadline),
                     b = the args blob (or a chunk of map items).
    rq:f:F:delayed   zset of retries waiting out their delay, scored by due time; any worker
                     moves due ones into the stream with one Lua script (atomic: moved once).
    rq:f:F:cancel    hash input id -> soft | hard (a day's TTL).
    rq:f:F:workers   hash consumer -> last heartbeat (for status; the lease needs nothing else).
    rq:out:C         one caller's result stream: h = (input id, status, traceback, generator item
                     number, seconds per item on the worker), b = the payload. Created by the
                     caller, kept alive by it (EXPIRE, refreshed), trimmed as it reads, deleted on
                     close; workers write with NOMKSTREAM, so a gone caller's stream is not revived.
    rq:call:ID       a spawned call's record (function, name) and, once done, its result `r`
                     (first writer wins: HSETNX); rq:call:ID:done is pushed to wake waiters.

Why streams and not lists plus a processing set: a consumer group gives the processing set for
free (the pending entries list, with each entry's owner, idle time and delivery count), XACK is
the commit, XAUTOCLAIM the hand-over, and one XREADGROUP COUNT n reads a batch; with lists the
per-item bookkeeping (BLMOVE to a per-worker list, a lease per item, a sweeper) is ours to write.

Flow. The client XADDs inputs in one pipeline per submit (a map submits up to 1,024 items, in
chunks of up to 512 items per entry for plain fast functions, sized from the workers' measured
time per item). A worker reads up to its window (max_inputs plus about 50 ms of work) with
XREADGROUP COUNT n BLOCK, checks the batch against the cancel hash (one HMGET), sends it to the
agent in one INPUTS frame, and its writer sends everything finished since its last write in one
pipeline: XADD to each caller's stream, the spawned call's record, XACK and XDEL. Entries are
deleted once acknowledged, so the stream holds only what is queued or running.

Delivery is at least once. A worker heartbeats every lease/3 by XCLAIMing its own pending
entries with JUSTID (which resets their idle time); a worker that dies stops doing so, and once
an entry has been idle longer than the lease (10 s by default, per function), any worker with
room takes it with XAUTOCLAIM and runs it. Redelivery does not touch `retries`: only a user
exception or a timeout does (the worker re-enqueues the input through the delayed zset with its
count raised, per the function's Retries), and an input delivered MAX_DELIVERIES times without
finishing is failed as a poison input. A result for an input that already finished (a duplicate
after redelivery) is dropped by the client; generator items carry their number, so a replay's
earlier items are dropped too. A spawned call's result is written once (HSETNX).

The agent runs as a child of the worker because it ends its own process to stop a sync input past
its timeout; the worker restarts it and resubmits the inputs queued behind, free of charge. If the
agent dies otherwise, the inputs it held count a failure each (chunks are split by the client and
their items run singly).

Memory on the client is what the call API keeps outstanding (a map keeps MAP_WINDOW items), plus
nothing per finished input: results are read, handed on and trimmed.
"""

from __future__ import annotations

from ._client import PlaneSession, QueuedCall, QueuePool, find_call, register, remove_function, through_queue
from ._launch import docker_worker_args, start_local_worker
from ._wire import GROUP, MAX_DELIVERIES, Keys

__all__ = ["GROUP", "MAX_DELIVERIES", "Keys", "PlaneSession", "QueuePool", "QueuedCall", "docker_worker_args",
           "find_call", "register", "remove_function", "start_local_worker", "through_queue"]

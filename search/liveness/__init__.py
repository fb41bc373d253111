"""Worker liveness: who is doing the work and whether it is still alive.

- `workers`: a process's identity (host, pid, start time, boot and pid namespace) and
  whether another process can tell it is alive.
- `heartbeat`: the process of its own that beats a worker's running trials in the study.
- `claims`: once-only steps of a shared study (one promotion, one re-queue of a dead
  worker's trial), taken over from a dead holder.
- `stale_runs`: tracking runs left RUNNING by a process that died.

The reaper of a dead worker's trials lives with the search loop (search.engine).
"""

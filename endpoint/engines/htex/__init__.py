"""GlobusComputeEngine and GlobusMPIEngine: Parsl's HighThroughputExecutor and MPIExecutor,
with batching, container workers, the block watcher and the heartbeat's status."""

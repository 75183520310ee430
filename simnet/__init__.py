"""simnet: deterministic simulation of a p2pnode network.

* :mod:`simnet.engine` - heap-based discrete-event loop driving sans-IO
  ``NodeCore`` objects over virtual time (one seed -> one trace hash);
* :mod:`simnet.network` - latency, loss, duplication, reordering, partitions;
* :mod:`simnet.executor` - simulated executions (duration, exit code,
  fail_rate, hang) with the driver's hard timeout;
* :mod:`simnet.harness` - a cluster: start, submit, crash, restart, partition;
* :mod:`simnet.invariants` - safety/liveness checkers run during every run;
* :mod:`simnet.kind_invariants` - the same for cron, daemon, service and ops
  jobs (one run per scheduled time, no silent skip, no overlap; daemon
  coverage and joiners, service recovery, with measured bounds);
* :mod:`simnet.stream_invariants`, :mod:`simnet.chain_invariants`,
  :mod:`simnet.dag_invariants` - stream (fencing, monotonic checkpoints,
  at-least-once, cut-off consumers stop, micro-batch exactly-once), chain
  (one owner after every event, one accepted result per ownership record,
  verifiable logs, takeover bound) and DAG (order, when-semantics, once);
* :mod:`simnet.sources` - the simulated world around the cores: stream
  sources and consumers, task outputs and items; :mod:`simnet.connector`
  the micro-batch connector; :mod:`simnet.view` what the connector and the
  byzantine adversary see of a cluster;
* :mod:`simnet.runner` / :mod:`simnet.cli` - ``python -m simnet run|sweep``;
* :mod:`simnet.triomode` - the real trio runtime over the simulated network.
"""

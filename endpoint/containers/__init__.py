"""Workers in containers: launch commands, runtime clients, version checks and routing.

* `spec` and `argv`: typed container specs and the argv builders for docker, podman,
  podman-hpc, apptainer, singularity and custom command templates;
* `clients`: image checks, pulls and cleanup per runtime;
* `versions`: what a containerized worker must share with the endpoint;
* `worker` and `entry`: what runs inside a container (a process-pool worker over stdio; a
  PID-1-safe runner for Parsl's worker pool);
* `router`: the soft/hard routing policy, with its counters.

The engines that use these live in `endpoint.engines` (`process`, `htex`, `routing`). This
package imports nothing heavy: its worker-side modules run in every containerized worker.
"""

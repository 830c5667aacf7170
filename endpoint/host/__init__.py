"""The machine-facing pieces every endpoint process uses: directories, the pid lock, daemonizing,
hooks, logs, status.json and health, process titles, and the event-loop plumbing."""

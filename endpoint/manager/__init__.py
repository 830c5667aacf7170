"""The manager (core) endpoint process: command decoding, identity mapping, templating, the
spawner and the audit log. It starts user endpoints; it runs no tasks."""

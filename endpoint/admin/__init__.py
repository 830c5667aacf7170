"""What each CLI verb does (configure, start, stop, list, delete, boot, login), run in the CLI's
process or, for `start`, in the daemon it becomes. Never prints: the CLI reports."""

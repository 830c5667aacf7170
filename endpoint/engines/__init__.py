"""Engines run tasks: `base` is the interface the runtime sees, `build` makes one from a
config, and each implementation (thread, process, htex/, routing) is imported only when built.
"""

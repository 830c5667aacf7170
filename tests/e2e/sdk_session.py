"""A long-lived official-SDK session for the e2e scenarios; run by the peer venv's python.

Importing the SDK and fetching a token costs seconds on a loaded machine; one session serves
every scenario of a module. Each request names a script file: it runs as `__main__` (so the
SDK's source-based code serializers find its source, and dill ships its functions by value, as
for a user's own script) and leaves its answer in the global `out`.

Protocol, one JSON document a line: request {"script": PATH}; reply {"out": ...} or
{"error": TRACEBACK}. The scripts' own stdout goes to stderr, so a print cannot corrupt it.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import traceback


def main() -> None:
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for line in sys.stdin:
        request = json.loads(line)
        print(f"--- {request['script']}", file=sys.stderr, flush=True)
        try:
            scope = runpy.run_path(request["script"], run_name="__main__")
            reply = {"out": scope.get("out")}
        except BaseException:  # a scenario's SystemExit is an answer too
            reply = {"error": traceback.format_exc()}
        replies.write(json.dumps(reply, default=repr) + "\n")


if __name__ == "__main__":
    main()

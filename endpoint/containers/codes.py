"""Error codes of Results about containers (``error_details.code``); listed in engines.base."""

from __future__ import annotations

CODE_IMAGE_NOT_FOUND = "ContainerImageNotFound"
CODE_VERSION_MISMATCH = "WorkerVersionMismatch"
CODE_CONTAINER_FAILED = "ContainerStartFailed"
CODE_IMAGE_NOT_ALLOWED = "ContainerImageNotAllowed"
#: The SDK ``resource_specification`` key that names a task's container image.
CONTAINER_IMAGE_KEY = "container_image"

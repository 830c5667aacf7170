"""The status page: a server-rendered view of the signed-in identity's endpoints and tasks."""

from __future__ import annotations

from webservice.ui.routes import router

__all__ = ["router"]

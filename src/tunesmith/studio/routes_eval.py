"""Studio screen: eval (being built)."""

from __future__ import annotations

from fastapi import APIRouter

from tunesmith.studio.render import StudioRoute

router = APIRouter(prefix="/studio", route_class=StudioRoute, include_in_schema=False)

"""GET / (the web console) and GET /console/{name} (its scripts and style sheet), served from service/console/.

The page needs no key: it holds no data. The data routes it calls carry the auth, and the page asks for a key
when one of them answers 401. Every asset comes from this service (no CDN), no script runs inline, and the
Content-Security-Policy says so, so a page that works here works offline.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

router = APIRouter(tags=["console"], include_in_schema=False)

CONSOLE_DIR = Path(__file__).resolve().parent.parent / "console"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def console_assets(folder: Path = CONSOLE_DIR) -> dict[str, Path]:
    """The files the console may serve, by name: only those in the folder with a known type (no paths)."""
    return {path.name: path for path in sorted(folder.iterdir()) if path.suffix in MEDIA_TYPES and path.is_file()}


def asset_response(path: Path) -> FileResponse:
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=SECURITY_HEADERS)


@router.get("/")
async def console_page() -> FileResponse:
    return asset_response(CONSOLE_DIR / "index.html")


@router.get("/console/{name}")
async def console_asset(name: str) -> FileResponse:
    path = console_assets().get(name)
    if path is None:
        raise HTTPException(404, f"the console has no file {name!r}: open / for the console")
    return asset_response(path)

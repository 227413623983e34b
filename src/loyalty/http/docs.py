"""The service's own description: /openapi.json and the interactive page at /docs.

Swagger UI's files ship in a Python package, so /docs works with no internet access. Only the
files our page uses are served: the package also holds Swagger's stock page, which points to
an outside demo document.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Annotated, Any

from msgspec import Meta
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

from loyalty.errors import NotFound
from loyalty.http.responses import PATH_SHOWN_MAX, json_response
from loyalty.http.routing import Endpoint, Operation, public

TAG = "Service"
_ASSETS = {
    "swagger-ui.css": (Path(swagger_ui_path) / "swagger-ui.css", "text/css"),
    "swagger-ui-bundle.js": (Path(swagger_ui_path) / "swagger-ui-bundle.js", "text/javascript"),
    "docs.js": (Path(__file__).with_name("docs.js"), "text/javascript"),
}
AssetName = Annotated[str, Meta(extra_json_schema={"enum": sorted(_ASSETS)})]
PAGE = """<!doctype html>
<html>
<head>
<meta charset="utf-8">
<title>Loyalty Points API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/assets/docs.js"></script>
</body>
</html>
"""


def endpoints(document: Callable[[], dict[str, Any]]) -> list[Endpoint]:
    """The document's routes; `document` builds it (once) from the whole route table."""
    cached = cache(document)

    async def openapi_json(request: Request) -> Response:
        return json_response(cached())

    async def page(request: Request) -> Response:
        return HTMLResponse(PAGE)

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        found = _ASSETS.get(name)
        if found is None:
            shown = request.url.path[:PATH_SHOWN_MAX]
            raise NotFound(f"Route {request.method} {shown} was not found")
        file, media_type = found
        return FileResponse(file, media_type=media_type)

    return [
        Endpoint(
            "GET",
            "/openapi.json",
            public(openapi_json),
            Operation(
                "This document",
                TAG,
                ok_description="The OpenAPI 3.1 document",
                uses_database=False,
            ),
        ),
        Endpoint(
            "GET",
            "/docs",
            public(page),
            Operation(
                "Interactive documentation",
                TAG,
                ok_description="A page that renders this document",
                ok_media_types=("text/html",),
                uses_database=False,
            ),
        ),
        Endpoint(
            "GET",
            "/docs/assets/{name}",
            public(asset),
            Operation(
                "The interactive documentation's scripts and styles",
                TAG,
                ok_description="The file",
                ok_media_types=("text/css", "text/javascript"),
                path_params={"name": AssetName},
                errors={404: "No such file"},
                uses_database=False,
            ),
        ),
    ]

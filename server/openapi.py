"""OpenAPI 3.1 schema (and a plain /docs page) of the REST gateway, generated from server.rest.FIELDS.

The request schema has one property per field of the table the validator uses, so the two
cannot drift apart: a field kind without a schema here fails at the first schema build.
"""

from __future__ import annotations

import html

from server.rest import FIELDS, MASK_FORMATS, MAX_IMAGE_ID, MAX_ITEMS, REQUIRED_ONE_OF, Field

_NUMBER = {"type": "number"}
_PAIR = {"type": "array", "items": _NUMBER, "minItems": 2, "maxItems": 2, "description": "[x, y] px"}
_BOX = {"type": "array", "items": _NUMBER, "minItems": 4, "maxItems": 4, "description": "[x0, y0, x1, y1] px"}
_BOXES = {"type": "array", "items": _BOX, "minItems": 1, "maxItems": MAX_ITEMS}
_KIND_SCHEMAS = {
    "image": {"type": "string", "contentEncoding": "base64"},
    "text": {
        "oneOf": [
            {"type": "string", "minLength": 1},
            {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "maxItems": MAX_ITEMS},
        ]
    },
    "points": {"type": "array", "items": _PAIR, "minItems": 1, "maxItems": MAX_ITEMS},
    "labels": {"type": "array", "items": {"type": "integer", "enum": [0, 1]}, "minItems": 1, "maxItems": MAX_ITEMS},
    "box": {"oneOf": [_BOX, _BOXES]},
    "boxes": _BOXES,
    "string": {"type": "string", "minLength": 1, "maxLength": MAX_IMAGE_ID},
}


def field_schema(f: Field) -> dict:
    """JSON schema of one request field (type, range, enum, default, description)."""
    if f.kind in ("number", "integer"):
        schema = {"type": f.kind, "minimum": f.minimum, "maximum": f.maximum}
    elif f.kind == "choice":
        schema = {"type": "string", "enum": list(f.choices)}
    else:
        schema = dict(_KIND_SCHEMAS[f.kind])
    schema["description"] = f"{f.doc} (modes: {', '.join(f.modes)})"
    if f.default is not None:
        schema["default"] = f.default
    return schema


def request_schema() -> dict:
    """The segmentation request object; unknown properties are ignored by the gateway."""
    return {
        "type": "object",
        "anyOf": [{"required": [name]} for name in REQUIRED_ONE_OF],
        "additionalProperties": True,
        "properties": {f.name: field_schema(f) for f in FIELDS},
    }


_MASK = {
    "description": "per mask_format: bool → bool[H][W]; rle → COCO RLE; png → base64 PNG",
    "oneOf": [
        {"type": "array", "items": {"type": "array", "items": {"type": "boolean"}}},
        {"$ref": "#/components/schemas/RLE"},
        {"type": "string", "contentEncoding": "base64"},
    ],
}
_SHAPE = {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2, "description": "[h, w]"}
_FLOATS = {"type": "array", "items": _NUMBER}


def _object(properties: dict, required: tuple, description: str) -> dict:
    return {"type": "object", "description": description, "properties": properties, "required": list(required)}


def response_schemas() -> dict:
    """components.schemas: the response of each mode, the RLE mask and the error."""
    auto_item = _object(
        {
            "segmentation": _MASK,
            "score": _NUMBER,
            "area": {"type": "integer"},
            "bbox": {"type": "array", "items": {"type": "integer"}, "description": "[x, y, w, h] px"},
            "predicted_iou": _NUMBER,
            "stability_score": _NUMBER,
        },
        ("segmentation", "score", "area", "bbox", "predicted_iou", "stability_score"),
        "one mask",
    )
    return {
        "RLE": _object(
            {"size": _SHAPE, "counts": {"type": "string"}},
            ("size", "counts"),
            "COCO compressed RLE (column-major), as pycocotools.mask.encode",
        ),
        "TextResponse": _object(
            {
                "masks": {"type": "array", "items": _MASK},
                "boxes": {"type": "array", "items": _BOX},
                "scores": _FLOATS,
                "count": {"type": "integer"},
                "image_shape": _SHAPE,
                "labels": {"type": "array", "items": {"type": "integer"}, "description": "only when text is a list"},
                "concepts": {"type": "array", "items": {"type": "string"}, "description": "only when text is a list"},
            },
            ("masks", "boxes", "scores", "count", "image_shape"),
            "mode text",
        ),
        "PromptResponse": _object(
            {"mask": _MASK, "score": _NUMBER, "all_scores": _FLOATS, "image_shape": _SHAPE},
            ("mask", "score", "all_scores", "image_shape"),
            "mode point / box, one object",
        ),
        "PromptListResponse": _object(
            {
                "masks": {"type": "array", "items": _MASK},
                "boxes": {"type": "array", "items": _BOX},
                "scores": _FLOATS,
                "all_scores": {"type": "array", "items": _FLOATS},
                "count": {"type": "integer"},
                "image_shape": _SHAPE,
            },
            ("masks", "boxes", "scores", "all_scores", "count", "image_shape"),
            "mode point / box when box_coords is a list of boxes (one object per box)",
        ),
        "AutoResponse": _object(
            {"masks": {"type": "array", "items": auto_item}, "count": {"type": "integer"}, "image_shape": _SHAPE},
            ("masks", "count", "image_shape"),
            "mode auto",
        ),
        "Error": _object({"error": {"type": "string"}}, ("error",), "what is wrong and how to fix it"),
    }


def _error(description: str) -> dict:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _segment_operation() -> dict:
    modes = ("TextResponse", "PromptResponse", "PromptListResponse", "AutoResponse")
    ok = {"oneOf": [{"$ref": f"#/components/schemas/{name}"} for name in modes]}
    return {
        "summary": "Segment an image (text concepts, points, boxes or everything)",
        "requestBody": {"required": True, "content": {"application/json": {"schema": request_schema()}}},
        "responses": {
            "200": {"description": "segmentation", "content": {"application/json": {"schema": ok}}},
            "400": _error("body is not JSON, or the image / coordinates do not fit the image"),
            "401": _error("missing or wrong Authorization: Bearer <token>"),
            "413": _error("body larger than the gateway's limit"),
            "422": _error("a field is missing, has the wrong type or is out of range"),
            "503": _error("the model server is not available"),
        },
    }


def openapi_schema(max_body_bytes: int | None = None) -> dict:
    """The whole OpenAPI 3.1 document of the gateway."""
    limit = f" Bodies over {max_body_bytes} bytes get 413." if max_body_bytes else ""
    health = {
        "summary": "Readiness of the model server",
        "security": [],
        "responses": {"200": {"description": "ready"}, "503": _error("not ready")},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "SAM3 REST gateway",
            "version": "1",
            "description": f"The seeds' JSON contract; masks as {'|'.join(MASK_FORMATS)}.{limit}",
        },
        "paths": {
            "/": {
                "post": _segment_operation(),
                "get": {
                    "summary": "web page (text/html)",
                    "security": [],
                    "responses": {"200": {"description": "HTML"}},
                },
            },
            "/segment": {"post": _segment_operation()},
            "/health": {"get": health},
        },
        "components": {
            "schemas": response_schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


def docs_html() -> str:
    """A plain HTML page listing the request fields (GET /docs)."""
    rows = "".join(
        f"<tr><td><code>{f.name}</code></td><td>{f.kind}</td><td>{html.escape(repr(f.default))}</td>"
        f"<td>{', '.join(f.modes)}</td><td>{html.escape(f.doc)}</td></tr>"
        for f in FIELDS
    )
    return (
        "<!doctype html><meta charset=utf-8><title>SAM3 REST API</title>"
        "<style>body{font:14px system-ui;margin:2em}td,th{border-bottom:1px solid #ddd;padding:4px 8px;"
        "text-align:left;vertical-align:top}</style><h1>SAM3 REST API</h1>"
        "<p><code>POST /</code> or <code>POST /segment</code> with a JSON object; schema: "
        "<a href=openapi.json>openapi.json</a>; web page: <a href=./>/</a>.</p>"
        "<table><tr><th>field</th><th>kind</th><th>default</th><th>modes</th><th>meaning</th></tr>"
        f"{rows}</table>"
    )

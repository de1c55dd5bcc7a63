"""``/docs``: the OpenAPI document as one plain HTML page, rendered here on the server.

No script, no CDN, no external font: the page is the document's operations (parameters,
request bodies, responses) and its schemas as tables, with links between them. Every text
that comes from the document is escaped.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

__all__ = ["render_page"]

_STYLE = """
body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:0 auto;padding:1rem;color:#222}
code,pre{font:13px ui-monospace,monospace;background:#f4f4f4;padding:0 .2em}
pre{padding:.5em;overflow-x:auto;white-space:pre-wrap}
table{border-collapse:collapse;width:100%;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#fafafa}
.op{border:1px solid #ccc;border-radius:6px;padding:.5em 1em;margin:1em 0}
.method{font-weight:bold;text-transform:uppercase;padding:0 .4em;border-radius:3px;color:#fff}
.get{background:#2a7ab0}.post{background:#3a8a3a}
h2{border-bottom:2px solid #eee;margin-top:2em}
"""


def render_page(spec: dict[str, Any]) -> str:
    info = spec["info"]
    body = [
        f"<h1>{escape(info['title'])} <small>{escape(info['version'])}</small></h1>",
        f"<p>{escape(info.get('summary', ''))}</p>",
        _paragraphs(info.get("description", "")),
        '<p>Machine-readable: <a href="/openapi.json"><code>/openapi.json</code></a> '
        f"(OpenAPI {escape(spec['openapi'])}).</p>",
        "<h2>Operations</h2>",
        _contents(spec),
    ]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            body.append(_operation(spec, path, method, operation))
    body.append("<h2>Schemas</h2>")
    for name, schema in spec["components"]["schemas"].items():
        body.append(_schema_section(name, schema))
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(info['title'])} API reference</title><style>{_STYLE}</style></head>"
        f"<body>{''.join(body)}</body></html>"
    )


def _anchor(method: str, path: str) -> str:
    return f"op-{method}-{path}".replace("/", "_").replace("{", "").replace("}", "")


def _contents(spec: dict[str, Any]) -> str:
    rows = [
        f'<tr><td><span class="method {m}">{m}</span></td>'
        f'<td><a href="#{_anchor(m, p)}"><code>{escape(p)}</code></a></td>'
        f"<td>{escape(op.get('summary', ''))}</td></tr>"
        for p, ops in spec["paths"].items()
        for m, op in ops.items()
    ]
    return f"<table>{''.join(rows)}</table>"


def _paragraphs(text: str) -> str:
    return "".join(f"<p>{_inline(part)}</p>" for part in text.split("\n\n") if part.strip())


def _inline(text: str) -> str:
    """Escaped text, with the Markdown `code` spans of the document's descriptions kept."""
    pieces = escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(pieces))


def _resolve(spec: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    """``item``, or what its ``$ref`` points at inside the document."""
    while "$ref" in item:
        node: Any = spec
        for part in item["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        item = node
    return item


def _operation(spec: dict[str, Any], path: str, method: str, op: dict[str, Any]) -> str:
    parts = [
        f'<div class="op" id="{_anchor(method, path)}">',
        f'<h3><span class="method {method}">{method}</span> <code>{escape(path)}</code></h3>',
        f"<p><b>{escape(op.get('summary', ''))}</b></p>",
        _paragraphs(op.get("description", "")),
        "<p>Authorization: "
        + ("<code>Bearer</code> API key" if op.get("security") else "none")
        + "</p>",
    ]
    parameters = [_resolve(spec, p) for p in op.get("parameters", [])]
    if parameters:
        cells = "".join(
            f"<tr><td><code>{escape(p['name'])}</code></td><td>{escape(p['in'])}</td>"
            f"<td>{_type(p.get('schema', {}))}</td>"
            f"<td>{_inline(p.get('description', ''))}</td></tr>"
            for p in parameters
        )
        parts.append(
            "<h4>Parameters</h4><table><tr><th>name</th><th>in</th><th>type</th>"
            f"<th>description</th></tr>{cells}</table>"
        )
    if body := op.get("requestBody"):
        parts.append("<h4>Request body</h4>")
        for media_type, content in body["content"].items():
            parts.append(f"<p><code>{escape(media_type)}</code>: {_type(content['schema'])}</p>")
            for name, example in content.get("examples", {}).items():
                parts.append(f"<p>Example ({escape(name)}):</p>{_json_block(example['value'])}")
    rows: list[str] = []
    for status, response in op["responses"].items():
        response = _resolve(spec, response)
        media = ", ".join(
            f"<code>{escape(m)}</code> {_type(c.get('schema', {}))}"
            for m, c in response.get("content", {}).items()
        )
        headers = ", ".join(f"<code>{escape(h)}</code>" for h in response.get("headers", {}))
        rows.append(
            f"<tr><td><b>{escape(status)}</b></td><td>{_inline(response['description'])}</td>"
            f"<td>{media}</td><td>{headers}</td></tr>"
        )
    parts.append(
        "<h4>Responses</h4><table><tr><th>status</th><th>when</th><th>body</th>"
        f"<th>headers</th></tr>{''.join(rows)}</table></div>"
    )
    return "".join(parts)


def _type(schema: dict[str, Any]) -> str:
    """A short, linked rendering of a schema's type."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f'<a href="#schema-{escape(name)}">{escape(name)}</a>'
    for combinator in ("oneOf", "anyOf"):
        if combinator in schema:
            return " | ".join(_type(option) for option in schema[combinator])
    if "const" in schema:
        return f"<code>{escape(repr(schema['const']))}</code>"
    kind = schema.get("type", "any")
    kinds = kind if isinstance(kind, list) else [kind]
    rendered = []
    for each in kinds:
        if each == "array":
            rendered.append(f"array of {_type(schema.get('items', {}))}")
        else:
            rendered.append(escape(each))
    text = " | ".join(rendered)
    if fmt := schema.get("format"):
        text += f" ({escape(fmt)})"
    return text


_CONSTRAINTS = (
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "pattern",
    "default",
)


def _constraints(schema: dict[str, Any]) -> str:
    shown = [f"{name} {_code(schema[name])}" for name in _CONSTRAINTS if name in schema]
    if "enum" in schema:
        shown.append("one of " + ", ".join(_code(v) for v in schema["enum"]))
    return "; ".join(shown)


def _code(value: Any) -> str:
    return f"<code>{escape(str(value))}</code>"


def _schema_section(name: str, schema: dict[str, Any]) -> str:
    parts = [f'<h3 id="schema-{escape(name)}">{escape(name)}</h3>']
    description = schema.get("description", "")
    if "enum" in schema and "\n- " in description:  # a code listing: shown as the list below
        description = description.split("\n\n", 1)[0]
    parts.append(_paragraphs(description))
    if "enum" in schema:
        items = "".join(f"<li><code>{escape(str(v))}</code></li>" for v in schema["enum"])
        listing = dict(
            line[2:].split(": ", 1)
            for line in schema.get("description", "").splitlines()
            if line.startswith("- `")
        )
        if listing:
            items = "".join(
                f"<li><code>{escape(str(v))}</code>: {_inline(listing.get(f'`{v}`', ''))}</li>"
                for v in schema["enum"]
            )
        parts.append(f"<ul>{items}</ul>")
    properties = schema.get("properties", {})
    if properties:
        required = set(schema.get("required", []))
        rows = "".join(
            f"<tr><td><code>{escape(prop)}</code>{' *' if prop in required else ''}</td>"
            f"<td>{_type(sub)}</td><td>{_inline(sub.get('description', ''))} "
            f"{_constraints(sub)}</td></tr>"
            for prop, sub in properties.items()
        )
        parts.append(
            f"<table><tr><th>field (* required)</th><th>type</th><th>notes</th></tr>{rows}</table>"
        )
    if "example" in schema:
        parts.append(f"<p>Example:</p>{_json_block(schema['example'])}")
    return "".join(parts)


def _json_block(value: Any) -> str:
    return f"<pre>{escape(json.dumps(value, indent=2))}</pre>"

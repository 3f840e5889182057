"""An export carried inside an HTML report: write the block, find it again.

A report (:mod:`normlab.views.report`) embeds the comparison's JSON export
(:mod:`normlab.runs.exchange`, format ``json``) as ``<script type="application/json"
id="normlab-export">…</script>``, so the one file that shows the charts also re-imports the
runs (``normlab import report.html``). Inside the block every ``<`` is written ``\\u003c``
(still the same JSON), so no value can close the script element early.

:func:`script_block` writes the block; :func:`extract` finds it with the standard library's
HTML parser and returns the parsed JSON document, or raises ``ValueError`` saying what is
missing and how to get a file that imports.
"""
from __future__ import annotations

import base64
import binascii
import gzip
import json
import zlib
from html.parser import HTMLParser
from typing import Any

EXPORT_ID = "normlab-export"
NO_EXPORT = ("it is an HTML file without an embedded NormLab export (no <script "
             f"id=\"{EXPORT_ID}\"> block); only reports written by `normlab report` or the "
             "dashboard's Download report button carry their runs — or export the runs with "
             "`normlab export ID -o runs.json` and import that")


def json_text(doc: Any) -> str:
    """``doc`` as compact JSON that is safe inside a ``<script>`` element."""
    return json.dumps(doc, separators=(",", ":")).replace("<", "\\u003c")


def script_block(doc: dict, id: str = EXPORT_ID) -> str:
    """The ``<script type="application/json">`` element holding ``doc``, gzipped: the
    element's JSON is ``{"encoding": "gzip+base64", "data": "..."}`` (a float's 17 digits
    compress ~5×; a quick start's 9 runs are 7.9 MB of JSON, 2.1 MB in the block)."""
    raw = json.dumps(doc, separators=(",", ":")).encode()
    packed = base64.b64encode(gzip.compress(raw, 9, mtime=0)).decode("ascii")
    return (f'<script type="application/json" id="{id}">'
            f'{json_text({"encoding": ENCODING, "data": packed})}</script>')


ENCODING = "gzip+base64"


class _Finder(HTMLParser):
    """Collects the text of the script element with id ``target``."""

    def __init__(self, target: str) -> None:
        super().__init__(convert_charrefs=False)
        self.target, self.inside, self.found, self.parts = target, False, 0, []

    def handle_starttag(self, tag, attrs):
        if tag == "script" and dict(attrs).get("id") == self.target:
            self.inside, self.found = True, self.found + 1

    def handle_endtag(self, tag):
        if tag == "script":
            self.inside = False

    def handle_data(self, data):
        if self.inside:
            self.parts.append(data)


def extract(text: str, id: str = EXPORT_ID) -> Any:
    """The JSON document of the block ``id`` in HTML ``text`` (ValueError if absent, doubled
    or not valid JSON)."""
    finder = _Finder(id)
    finder.feed(text)
    finder.close()
    if finder.found == 0:
        raise ValueError(NO_EXPORT)
    if finder.found > 1:
        raise ValueError(f"it holds {finder.found} <script id=\"{id}\"> blocks, not one; "
                         "write the report again with `normlab report`")
    body = "".join(finder.parts)
    try:
        doc = json.loads(body)
        if isinstance(doc, dict) and doc.get("encoding") == ENCODING:
            doc = json.loads(gzip.decompress(base64.b64decode(doc["data"], validate=True)))
        return doc
    except (json.JSONDecodeError, UnicodeDecodeError, binascii.Error, EOFError, OSError, zlib.error,
            KeyError, TypeError) as e:
        raise ValueError(f"its embedded export (<script id=\"{id}\">) is damaged "
                         f"({type(e).__name__}: {e}); the file was cut or edited — download "
                         "the report again") from None


def looks_like_html(head: bytes) -> bool:
    """Whether a file's first bytes start an HTML document."""
    start = head.lstrip().lstrip(b"\xef\xbb\xbf").lstrip()[:15].lower()
    return start.startswith((b"<!doctype html", b"<html"))

"""Static HTML pages that open from ``file://`` with nothing from the network: the results
report (``results/<preset>/index.html``, :mod:`ciard_bench.reports.html`) and the
leaderboard (:mod:`ciard_bench.submit.leaderboard`).

A page is one file: its stylesheet and script are inlined from ``templates/page.css`` and
``templates/page.js``, and a Content-Security-Policy allows exactly those two (by their
sha256), images from the page's own folder or ``data:``, and nothing else: no remote
script, font or request, and no script that text from a results file or a model card could
smuggle in, even if an escape were missed. Every value reaches the HTML through jinja2 with
autoescaping on; links are kept only for ``http(s)`` URLs (:func:`safe_url`).
"""
from __future__ import annotations

import base64
import hashlib
from importlib import resources
from urllib.parse import urlsplit

import jinja2

from .svg import line_chart, whisker

__all__ = ["line_chart", "render_page", "safe_url", "whisker"]

_ENV = jinja2.Environment(loader=jinja2.PackageLoader("ciard_bench.web", "templates"),
                          autoescape=True, undefined=jinja2.StrictUndefined,
                          trim_blocks=True, lstrip_blocks=True)


def _asset(name: str) -> str:
    return resources.files("ciard_bench.web").joinpath("templates", name).read_text()


def _digest(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def safe_url(url: object) -> str | None:
    """``url`` if it is an absolute ``http``/``https`` URL, else None (rendered as text):
    ``javascript:``, ``data:``, relative and malformed links never become links."""
    if not isinstance(url, str):
        return None
    text = url.strip()
    try:
        parts = urlsplit(text)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    if any(ord(ch) < 33 or ch in "\"'<>`\\" for ch in text):   # no tricks inside the URL
        return None
    return text


def render_page(template: str, **context: object) -> str:
    """The page ``template`` (in ``templates/``) rendered with ``context``, the shared style and
    script inlined and pinned by the Content-Security-Policy."""
    css, js = _asset("page.css"), _asset("page.js")
    csp = (f"default-src 'none'; script-src {_digest(js)}; style-src {_digest(css)}; "
           "img-src 'self' file: data:; base-uri 'none'; form-action 'none'")
    return _ENV.get_template(template).render(css=css, js=js, csp=csp, **context)

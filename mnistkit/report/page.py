"""The page: :class:`Section` objects rendered into one HTML file by Jinja2 (autoescape on).

A section is an ``id`` (the anchor, and what the browser tests look for), a ``title`` and its
``body``: HTML made by :func:`render_part` from a small template in ``templates/`` (values are
escaped there), never by string concatenation. CSS (``report.css``) and script (``report.js``)
are included in the page itself; images come as ``data:`` URIs (``figures.py``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2
    from markupsafe import Markup


@dataclass
class Section:
    """One part of a report: ``<section id=...><h2>title</h2>body</section>``.

    ``body`` is trusted HTML (from :func:`render_part`); ``note`` a plain-text line under the
    title (escaped)."""

    id: str
    title: str
    body: Markup
    note: str = ""


@dataclass
class Page:
    """A whole report: its title, the facts under the title, and its sections in order."""

    title: str
    subtitle: str = ""
    sections: list[Section] = field(default_factory=list)


@functools.cache
def environment() -> jinja2.Environment:
    """Templates from this package's ``templates/`` folder; every ``{{ value }}`` is escaped."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("mnistkit.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt name fails the build, not the page
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_part(template: str, **context: Any) -> Markup:
    """A section body from ``templates/<template>`` (autoescaped), as trusted HTML."""
    from markupsafe import Markup

    return Markup(environment().get_template(template).render(**context))


def render_page(page: Page) -> str:
    """The complete HTML document: template, inline CSS and script, the sections."""
    from mnistkit import __version__

    return environment().get_template("report.html.j2").render(page=page, version=__version__)

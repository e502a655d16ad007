"""``mnistkit report``: one self-contained HTML file that explains a run (and, later, a sweep,
a group of seeds or several runs side by side).

Everything is inline (images as ``data:`` URIs, CSS and script in the page): the file opens
from a USB stick with the network off. The page is a list of :class:`Section` objects rendered
by one Jinja2 template (``templates/report.html.j2``, autoescaped); :func:`write_report` picks
what to build from the kind of folder it is given (``dispatch.py``).
"""

from mnistkit.report.dispatch import Written, write_report
from mnistkit.report.page import Section

__all__ = ["Section", "Written", "write_report"]

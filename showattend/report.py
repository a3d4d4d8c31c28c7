"""Self-contained HTML reports: one file (images embedded, no network, no server) to browse results.

* Captioning (``showattend caption --html``, ``showattend evaluate --html``): per image, the caption, and when
  evaluating the references and the image's scores. Hover or click a word and its attention map α_t appears over
  the image (bilinear upsampling of the L = h x w grid, the viridis colour map, a colour bar), with the gating
  scalar β_t. Cards sort by any score and filter by text.
* Translation (``showattend translate --html``): per sentence, the alignment α as a matrix (target subwords by
  source subwords); hovering a cell shows its weight and highlights its two subwords.

The pages' HTML, CSS and JavaScript are package data files in ``showattend/page/``; this module fills them in.
"""
from __future__ import annotations

import base64
import html
import io
import json
from importlib import resources
from typing import Dict, List, Optional

__all__ = ["image_data_uri", "write_caption_report", "write_alignment_report"]


def image_data_uri(image, max_side: int = 360) -> str:
    """A JPEG ``data:`` URI of a PIL image, downscaled to ``max_side`` pixels on its longer side."""
    img = image.convert("RGB")
    img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=82)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def write_caption_report(path: str, items: List[Dict], title: str, summary: Optional[Dict] = None) -> None:
    """Write the captioning report (atomically).

    Args:
        path: the HTML file.
        items: one dict per image (:func:`showattend.captioning.overlay.report_item` makes them): ``name``,
            ``image`` (a data URI), ``caption``, ``words`` (with ``<end>``), ``alphas`` (one row of L weights per
            word), ``betas``, ``grid`` (h, w), ``log_prob``, ``references``, ``scores`` ({metric: value}).
        title: the page's title.
        summary: corpus-level numbers shown at the top (e.g. the metrics), or None.
    """
    from .runs import atomic_write_text

    data = {"title": title, "summary": summary or {}, "items": items}
    atomic_write_text(path, _page(title, "caption", data))


def write_alignment_report(path: str, items: List[Dict], title: str) -> None:
    """Write a translation report: each sentence's translation and its alignment matrix (atomically).

    Args:
        items: one dict per sentence (:func:`showattend.translation.plot.report_items` makes them): ``source``,
            ``text``, ``src`` and ``tgt`` (the subwords as shown), ``alpha`` (len(tgt) rows of len(src) weights).
    """
    from .runs import atomic_write_text

    atomic_write_text(path, _page(title, "alignment", {"title": title, "items": items}))


def _asset(name: str) -> str:
    """A page asset: a package data file of ``showattend/page/`` (the HTML, CSS and JavaScript of the reports)."""
    return resources.files("showattend").joinpath("page", name).read_text(encoding="utf-8")


def _page(title: str, kind: str, data: Dict) -> str:
    """The report page of ``kind`` ("caption" or "alignment"): its assets, with the data inlined as JSON."""
    payload = json.dumps(data, ensure_ascii=False).replace("</", "<\\/")  # nothing in the data closes the script
    script = _asset("common.js") + _asset(f"{kind}.js")
    head = _asset("head.html").replace("STYLE", _asset("report.css")).replace("TITLE", html.escape(title))
    return (head + _asset(f"{kind}.html") +
            f'<script type="application/json" id="data">{payload}</script>\n<script>\n{script}</script>\n'
            "</body></html>\n")

"""Self-contained HTML reports: one file (images embedded, no network, no server) to browse results.

* Captioning (``showattend caption --html``, ``showattend evaluate --html``): per image, the caption, and when
  evaluating the references and the image's scores. Hover or click a word and its attention map α_t appears over
  the image (bilinear upsampling of the L = h x w grid, the viridis colour map, a colour bar), with the gating
  scalar β_t. Cards sort by any score and filter by text.
* Translation (``showattend translate --html``): per sentence, the alignment α as a matrix (target subwords by
  source subwords); hovering a cell shows its weight and highlights its two subwords.
"""
from __future__ import annotations

import base64
import html
import io
import json
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
    atomic_write_text(path, _page(title, _CAPTION_BODY, _CAPTION_JS, data))


def write_alignment_report(path: str, items: List[Dict], title: str) -> None:
    """Write a translation report: each sentence's translation and its alignment matrix (atomically).

    Args:
        items: one dict per sentence (:func:`showattend.translation.plot.report_items` makes them): ``source``,
            ``text``, ``src`` and ``tgt`` (the subwords as shown), ``alpha`` (len(tgt) rows of len(src) weights).
    """
    from .runs import atomic_write_text

    atomic_write_text(path, _page(title, _ALIGN_BODY, _ALIGN_JS, {"title": title, "items": items}))


def _page(title: str, body: str, script: str, data: Dict) -> str:
    payload = json.dumps(data, ensure_ascii=False).replace("</", "<\\/")  # nothing in the data closes the script
    return (_HEAD.replace("TITLE", html.escape(title)) + body +
            f'<script type="application/json" id="data">{payload}</script>\n<script>{_COMMON_JS}{script}</script>\n'
            "</body></html>\n")


_HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>TITLE</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; background: #f6f6f6; color: #222; }
header { position: sticky; top: 0; background: #fff; border-bottom: 1px solid #ddd; padding: 10px 16px; z-index: 2; }
h1 { font-size: 18px; margin: 0 0 6px; }
.controls { display: flex; gap: 12px; align-items: center; flex-wrap: wrap; }
.summary { color: #555; font-size: 13px; margin-bottom: 6px; }
.bar { display: inline-flex; align-items: center; gap: 6px; font-size: 12px; color: #555; }
.bar span.grad { width: 140px; height: 12px; border: 1px solid #999;
  background: linear-gradient(to right, #440154, #3b528b, #21918c, #5ec962, #fde725); }
main { display: grid; grid-template-columns: repeat(auto-fill, minmax(380px, 1fr)); gap: 14px; padding: 14px; }
.card { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 10px; }
.card.hidden { display: none; }
.frame { position: relative; display: inline-block; line-height: 0; }
.frame img { max-width: 360px; max-height: 360px; display: block; }
.frame canvas { position: absolute; left: 0; top: 0; width: 100%; height: 100%; pointer-events: none; }
.name { font-size: 12px; color: #777; word-break: break-all; margin-top: 6px; }
.caption { margin: 6px 0; font-size: 16px; }
.word { cursor: pointer; padding: 1px 3px; border-radius: 3px; }
.word:hover, .word.active { background: #fde725; }
.beta { font-size: 12px; color: #555; min-height: 16px; }
.refs { margin: 4px 0 0 18px; padding: 0; color: #444; font-size: 13px; }
.scores { font-size: 12px; color: #333; margin-top: 4px; }
table.align { border-collapse: collapse; margin-top: 6px; font-size: 12px; }
table.align td { width: 22px; height: 22px; border: 1px solid #fff; }
table.align th { font-weight: normal; padding: 2px 4px; white-space: nowrap; }
table.align th.top { writing-mode: vertical-rl; transform: rotate(180deg); }
table.align .hl { background: #fde725; }
.value { font-size: 12px; color: #333; min-height: 16px; }
</style></head><body>
"""

_CAPTION_BODY = """<header><h1 id="title"></h1><div class="summary" id="summary"></div>
<div class="controls">
<label>sort <select id="sort"><option value="">input order</option></select></label>
<label>filter <input id="filter" type="search" placeholder="words in caption, references or name"></label>
<span id="count"></span>
<span class="bar">α 0 <span class="grad"></span> max of the word's map</span>
</div></header>
<main id="cards"></main>
"""

_ALIGN_BODY = """<header><h1 id="title"></h1>
<span class="bar">α 0 <span class="grad"></span> 1</span></header>
<main id="cards"></main>
"""

_COMMON_JS = r"""
const DATA = JSON.parse(document.getElementById('data').textContent);
document.getElementById('title').textContent = DATA.title;
const VIRIDIS = [[68,1,84],[59,82,139],[33,145,140],[94,201,98],[253,231,37]];
function colour(x) {  // x in [0, 1] -> [r, g, b] on viridis
  x = Math.min(1, Math.max(0, x)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x)), f = x - i;
  return VIRIDIS[i].map((c, k) => Math.round(c + f * (VIRIDIS[i + 1][k] - c)));
}
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
"""

_CAPTION_JS = r"""
const cards = document.getElementById('cards');
const keys = [...new Set(DATA.items.flatMap(it => Object.keys(it.scores)))];
const sortBox = document.getElementById('sort');
for (const k of keys) for (const dir of ['high', 'low']) {
  const o = el('option', null, `${k}, ${dir} first`); o.value = `${k}|${dir}`; sortBox.appendChild(o);
}
document.getElementById('summary').textContent =
  Object.entries(DATA.summary).map(([k, v]) => `${k} ${typeof v === 'number' ? v.toFixed(2) : v}`).join(' · ');

function show(card, item, t) {  // draw α_t over the image
  const canvas = card.querySelector('canvas'), img = card.querySelector('img');
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  const ctx = canvas.getContext('2d');
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  card.querySelectorAll('.word').forEach((w, k) => w.classList.toggle('active', k === t));
  card.dataset.shown = String(t);
  if (t < 0) { card.querySelector('.beta').textContent = ''; return; }
  const [h, w] = item.grid, a = item.alphas[t], top = Math.max(...a) || 1;
  const small = document.createElement('canvas'); small.width = w; small.height = h;
  const sctx = small.getContext('2d'), px = sctx.createImageData(w, h);
  for (let i = 0; i < a.length; i++) {
    const [r, g, b] = colour(a[i] / top);
    px.data.set([r, g, b, Math.round(60 + 150 * a[i] / top)], 4 * i);
  }
  sctx.putImageData(px, 0, 0);
  ctx.imageSmoothingEnabled = true; ctx.imageSmoothingQuality = 'high';
  ctx.drawImage(small, 0, 0, canvas.width, canvas.height);
  card.querySelector('.beta').textContent =
    `"${item.words[t]}": β = ${item.betas[t].toFixed(2)}, max α = ${top.toFixed(3)}`;
}

DATA.items.forEach((item, idx) => {
  const card = el('div', 'card'); card.dataset.idx = idx; card.dataset.shown = '-1';
  const frame = el('div', 'frame'), img = el('img'); img.src = item.image; img.alt = item.name;
  frame.append(img, el('canvas')); card.appendChild(frame);
  const cap = el('div', 'caption');
  item.words.forEach((word, t) => {
    const s = el('span', 'word', word); s.dataset.t = t;
    s.addEventListener('mouseenter', () => show(card, item, t));
    s.addEventListener('click', () => show(card, item, t));
    cap.append(s, ' ');
  });
  card.appendChild(cap);
  card.appendChild(el('div', 'beta'));
  if (item.references.length) {
    const ul = el('ul', 'refs'); item.references.forEach(r => ul.appendChild(el('li', null, r))); card.appendChild(ul);
  }
  const sc = Object.entries(item.scores).map(([k, v]) => `${k} ${v.toFixed(2)}`);
  sc.push(`log p ${item.log_prob.toFixed(2)}`);
  card.appendChild(el('div', 'scores', sc.join(' · ')));
  card.appendChild(el('div', 'name', item.name));
  card.addEventListener('mouseleave', () => show(card, item, -1));
  cards.appendChild(card);
});

function refresh() {
  const [key, dir] = sortBox.value.split('|'), q = document.getElementById('filter').value.toLowerCase();
  const all = [...cards.children];
  all.sort((a, b) => {
    if (!key) return a.dataset.idx - b.dataset.idx;
    const x = DATA.items[a.dataset.idx].scores[key] ?? -Infinity;
    const y = DATA.items[b.dataset.idx].scores[key] ?? -Infinity;
    return dir === 'high' ? y - x : x - y;
  });
  let shown = 0;
  for (const c of all) {
    const it = DATA.items[c.dataset.idx];
    const text = [it.caption, it.name, ...it.references].join(' ').toLowerCase();
    c.classList.toggle('hidden', !!q && !text.includes(q));
    shown += !c.classList.contains('hidden');
    cards.appendChild(c);
  }
  document.getElementById('count').textContent = `${shown} of ${all.length} images`;
}
sortBox.addEventListener('change', refresh);
document.getElementById('filter').addEventListener('input', refresh);
refresh();
"""

_ALIGN_JS = r"""
const cards = document.getElementById('cards');
DATA.items.forEach((item, idx) => {
  const card = el('div', 'card'); card.dataset.idx = idx;
  card.appendChild(el('div', 'name', item.source));
  card.appendChild(el('div', 'caption', item.text));
  const value = el('div', 'value'); card.appendChild(value);
  const table = el('table', 'align'), head = el('tr');
  head.appendChild(el('th'));
  item.src.forEach(p => head.appendChild(el('th', 'top', p)));
  table.appendChild(head);
  item.tgt.forEach((p, i) => {
    const tr = el('tr'); tr.appendChild(el('th', null, p));
    item.src.forEach((q, j) => {
      const td = el('td'), a = item.alpha[i][j], [r, g, b] = colour(a);
      td.style.background = `rgb(${r},${g},${b})`; td.dataset.i = i; td.dataset.j = j;
      td.addEventListener('mouseenter', () => {
        table.querySelectorAll('.hl').forEach(x => x.classList.remove('hl'));
        tr.firstChild.classList.add('hl'); head.children[j + 1].classList.add('hl');
        value.textContent = `α("${p}" ← "${q}") = ${a.toFixed(3)}`;
      });
      tr.appendChild(td);
    });
    table.appendChild(tr);
  });
  card.appendChild(table);
  cards.appendChild(card);
});
"""

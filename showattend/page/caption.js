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

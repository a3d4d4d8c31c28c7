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

// Overlap: pick tasks (or all, up to a limit) → heatmap of Jaccard or containment between their grafts,
// ordered by average-linkage clustering on 1 − Jaccard so similar tasks sit together; the tooltip gives the
// random-mask baseline; a click on a cell opens the pair's breakdown by layer and module type.

import { h, replace, int, fixed, statusLine, showError } from './dom.js';
import * as api from './api.js';
import { heatmap, bars } from './charts.js';

const MODULE_ORDER = ['query', 'key', 'value', 'attention_output', 'ffn_in', 'ffn_out', 'bias', 'layernorm', 'embeddings'];

/** Most tasks one heatmap shows. */
export const MAX_TASKS = 16;

/** Leaf order of average-linkage agglomerative clustering on distance 1 − similarity. */
export function clusterOrder(sim) {
  let clusters = sim.map((_, i) => ({ members: [i] }));
  const dist = (a, b) => {
    let sum = 0;
    for (const i of a.members) for (const j of b.members) sum += 1 - sim[i][j];
    return sum / (a.members.length * b.members.length);
  };
  while (clusters.length > 1) {
    let best = [0, 1, Infinity];
    for (let p = 0; p < clusters.length; p++) {
      for (let q = p + 1; q < clusters.length; q++) {
        const d = dist(clusters[p], clusters[q]);
        if (d < best[2] - 1e-12) best = [p, q, d];
      }
    }
    const [p, q] = best;
    clusters[p] = { members: [...clusters[p].members, ...clusters[q].members] };
    clusters = clusters.filter((_, k) => k !== q);
  }
  return clusters.length ? clusters[0].members : [];
}

function sortLayers(keys) {
  const rank = (k) => (k === 'embeddings' ? 1e9 : Number(k.replace('layer ', '')));
  return [...new Set(keys)].sort((a, b) => rank(a) - rank(b));
}

function breakdown(report, a, b) {
  const names = report.tasks;
  const shared = a === b ? report.breakdown[a] : report.shared_breakdown[`${Math.min(a, b)},${Math.max(a, b)}`];
  const ba = report.breakdown[a];
  const bb = report.breakdown[b];
  const layers = sortLayers([...Object.keys(ba.by_layer), ...Object.keys(bb.by_layer)]);
  const count = (m, k) => m[k] || 0;
  const title = a === b ? `${names[a]}: where its ${int(report.sizes[a])} parameters live` : `${names[a]} × ${names[b]}: where the ${int(report.intersection[a][b])} shared parameters live`;
  const series = a === b
    ? [{ name: names[a], color: '#4292c6', values: layers.map((l) => count(ba.by_layer, l)) }]
    : [
      { name: names[a], color: '#9ecae1', values: layers.map((l) => count(ba.by_layer, l)) },
      { name: names[b], color: '#4292c6', values: layers.map((l) => count(bb.by_layer, l)) },
      { name: 'shared', color: '#084594', values: layers.map((l) => count(shared.by_layer, l)) },
    ];
  const jac = (l) => {
    const s = count(shared.by_layer, l);
    const u = count(ba.by_layer, l) + count(bb.by_layer, l) - s;
    return u ? s / u : NaN;
  };
  const rank = (m) => (MODULE_ORDER.indexOf(m) < 0 ? MODULE_ORDER.length : MODULE_ORDER.indexOf(m));
  const modules = [...new Set([...Object.keys(ba.by_module), ...Object.keys(bb.by_module)])].sort((x, y) => rank(x) - rank(y));
  return h('section', { 'aria-labelledby': 'h-breakdown', class: 'card', id: 'breakdown' },
    h('h2', { id: 'h-breakdown', tabindex: -1 }, title),
    h('div', { class: 'charts' }, bars(`Parameters per layer`, layers, series, int)),
    h('div', { class: 'grid2' },
      h('table', { class: 'data compact', id: 'breakdown-table' },
        h('caption', {}, 'Per layer'),
        h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Layer'), h('th', { scope: 'col', class: 'num' }, names[a]),
          a === b ? null : h('th', { scope: 'col', class: 'num' }, names[b]),
          a === b ? null : h('th', { scope: 'col', class: 'num' }, 'Shared'),
          a === b ? null : h('th', { scope: 'col', class: 'num' }, 'Jaccard'))),
        h('tbody', {}, layers.map((l) => h('tr', {}, h('th', { scope: 'row' }, l), h('td', { class: 'num' }, int(count(ba.by_layer, l))),
          a === b ? null : h('td', { class: 'num' }, int(count(bb.by_layer, l))),
          a === b ? null : h('td', { class: 'num' }, int(count(shared.by_layer, l))),
          a === b ? null : h('td', { class: 'num' }, fixed(jac(l), 3)))))),
      h('table', { class: 'data compact', id: 'module-table' },
        h('caption', {}, 'Per module type'),
        h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Module'), h('th', { scope: 'col', class: 'num' }, names[a]),
          a === b ? null : h('th', { scope: 'col', class: 'num' }, names[b]),
          a === b ? null : h('th', { scope: 'col', class: 'num' }, 'Shared'))),
        h('tbody', {}, modules.map((m) => h('tr', {}, h('th', { scope: 'row' }, m), h('td', { class: 'num' }, int(count(ba.by_module, m))),
          a === b ? null : h('td', { class: 'num' }, int(count(bb.by_module, m))),
          a === b ? null : h('td', { class: 'num' }, int(count(shared.by_module, m)))))))));
}

function drawHeatmap(report, measure, out, details) {
  const n = report.tasks.length;
  const order = clusterOrder(report.jaccard);
  const names = order.map((i) => report.tasks[i]);
  const matrix = measure === 'jaccard' ? report.jaccard : report.containment;
  const values = order.map((i) => order.map((j) => (i === j ? NaN : matrix[i][j])));
  const labels = order.map((i) => order.map((j) => {
    if (i === j) return '–';
    const v = matrix[i][j];
    if (measure !== 'jaccard') return v.toFixed(3);
    const r = report.random_jaccard[i][j];
    return r > 0 ? `${v.toFixed(3)} (×${Math.round(v / r)})` : v.toFixed(3);
  }));
  const describe = (x, y) => {
    const i = order[x];
    const j = order[y];
    if (i === j) return [report.tasks[i], `${int(report.sizes[i])} grafted parameters`, 'select for where they live'];
    const r = report.random_jaccard[i][j];
    return [
      `${report.tasks[i]} × ${report.tasks[j]}`,
      `Jaccard ${fixed(report.jaccard[i][j], 3)} · containment ${fixed(report.containment[i][j], 3)}`,
      `${int(report.intersection[i][j])} shared of ${int(report.sizes[i])} and ${int(report.sizes[j])}`,
      `random-mask baseline: Jaccard ${r.toExponential(2)}${r > 0 ? ` (observed ×${Math.round(report.jaccard[i][j] / r)})` : ''}`,
    ];
  };
  const label = measure === 'jaccard' ? 'Jaccard |A∩B| / |A∪B| (× random)' : 'containment |A∩B| / min(|A|, |B|)';
  replace(out,
    h('h2', { id: 'h-heatmap' }, `${label}, ${n} task${n === 1 ? '' : 's'}`),
    h('p', { class: 'note' }, 'Rows and columns ordered by average-linkage clustering on 1 − Jaccard. Hover or focus a cell for its numbers and the random-mask baseline; select it (click, Enter) for the breakdown by layer. Arrow keys move between cells.'),
    h('div', { class: 'charts', id: 'overlap-heatmap' }, heatmap({
      title: `Overlap heatmap: ${label}`,
      rows: names, cols: names, values, labels, cellW: 70,
      tip: describe, name: (x, y) => describe(x, y).join('; '),
      onCell: (x, y) => {
        replace(details, breakdown(report, order[x], order[y]));
        details.querySelector('h2').focus();
      },
    })));
}

/** The overlap view. */
export function render(main, ctx) {
  const line = statusLine();
  main.append(
    h('h1', { tabindex: -1 }, 'Overlap'),
    h('p', { class: 'lede' }, 'How many grafted parameters tasks share. Two random masks of these sizes would share almost none: the tooltip gives that baseline.'),
  );
  const boxes = h('div', { class: 'checks', id: 'overlap-tasks' });
  const measure = h('fieldset', { class: 'inline' }, h('legend', {}, 'Measure'),
    h('label', { class: 'check' }, h('input', { type: 'radio', name: 'measure', value: 'jaccard', checked: true }), ' Jaccard'),
    h('label', { class: 'check' }, h('input', { type: 'radio', name: 'measure', value: 'containment' }), ' containment'));
  const show = h('button', { type: 'submit', id: 'overlap-show' }, 'Show overlap');
  const form = h('form', { id: 'overlap-form', class: 'card' },
    h('fieldset', {}, h('legend', {}, `Tasks (at most ${MAX_TASKS})`), boxes,
      h('div', { class: 'row' },
        h('button', { type: 'button', class: 'secondary', id: 'overlap-all' }, `All (first ${MAX_TASKS})`),
        h('button', { type: 'button', class: 'secondary', id: 'overlap-none' }, 'None'))),
    measure, h('div', { class: 'row' }, show), line);
  const out = h('section', { class: 'card', 'aria-labelledby': 'h-heatmap', id: 'overlap-out' });
  const details = h('div', { id: 'overlap-details' });
  main.append(form, out, details);
  let report = null;
  const checked = () => [...boxes.querySelectorAll('input:checked')].map((b) => b.value);
  const measureNow = () => form.querySelector('input[name=measure]:checked').value;
  const run = async () => {
    const names = checked();
    line.classList.remove('error');
    if (!names.length) {
      line.textContent = 'Pick at least one task.';
      return;
    }
    if (names.length > MAX_TASKS) {
      showError(line, new Error(`Pick at most ${MAX_TASKS} tasks.`));
      return;
    }
    line.textContent = 'Computing…';
    try {
      report = await api.get(`/v1/overlap?tasks=${names.map(encodeURIComponent).join(',')}`, ctx.signal);
      line.textContent = '';
      details.replaceChildren();
      drawHeatmap(report, measureNow(), out, details);
    } catch (e) {
      showError(line, e);
    }
  };
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    run();
  });
  measure.addEventListener('change', () => report && drawHeatmap(report, measureNow(), out, details));
  const setAll = (on) => [...boxes.querySelectorAll('input')].forEach((b, k) => {
    b.checked = on && k < MAX_TASKS;
  });
  form.querySelector('#overlap-all').addEventListener('click', () => setAll(true));
  form.querySelector('#overlap-none').addEventListener('click', () => setAll(false));
  api.get('/v1/tasks', ctx.signal).then((tasks) => {
    if (!tasks.length) {
      line.textContent = 'No tasks yet.';
      return;
    }
    boxes.append(...tasks.map((t, k) => h('label', { class: 'check' },
      h('input', { type: 'checkbox', value: t.name, checked: k < MAX_TASKS }), ` ${t.name}`)));
    run();
  }).catch((e) => showError(line, e));
}


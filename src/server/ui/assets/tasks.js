// Tasks: the sortable, filterable table of every task, and one task's page (metrics, reliability diagrams
// before and after temperature scaling, placement map, and a "try it" box that predicts on typed text).

import { h, replace, pct, int, fixed, statusLine, showError, field } from './dom.js';
import * as api from './api.js';
import { heatmap, reliability, retentionCurve } from './charts.js';

function graftRow(summary) {
  const variants = (summary.metrics && summary.metrics.variants) || [];
  return variants.find((v) => v.name === 'graft') || {};
}

function calibrationText(t) {
  return Number.isFinite(t) ? `temperature (T = ${t.toFixed(2)})` : 'none';
}

const COLUMNS = [
  { key: 'name', label: 'Task', text: true },
  { key: 'labels', label: 'Labels', text: true },
  { key: 'head', label: 'Head', text: true },
  { key: 'method', label: 'Method', text: true },
  { key: 'graft_size', label: 'Graft size', show: int },
  { key: 'percent_of_model', label: 'Share of model', show: (x) => `${fixed(x, 4)}%` },
  { key: 'kept', label: 'Gain kept', show: (x) => pct(x) },
  { key: 'accuracy', label: 'Accuracy', show: (x) => pct(x) },
  { key: 'ece', label: 'ECE', show: (x) => pct(x) },
  { key: 'ece_after', label: 'ECE after T', show: (x) => pct(x) },
  { key: 'calibration', label: 'Calibration', text: true },
];

function rowOf(t) {
  const g = graftRow(t);
  return {
    name: t.name,
    labels: t.labels.join(', '),
    head: t.head,
    method: t.method,
    graft_size: t.graft_size,
    percent_of_model: t.percent_of_model,
    kept: t.retention ? t.retention.kept : undefined,
    accuracy: g.accuracy,
    ece: g.ece,
    ece_after: g.ece_after_temperature,
    calibration: calibrationText(t.temperature),
  };
}

/** The table of tasks. */
export function renderList(main, ctx) {
  const line = statusLine();
  main.append(
    h('h1', { tabindex: -1 }, 'Tasks'),
    h('p', { class: 'lede' }, 'Every task served from the one base model. Accuracy and calibration error (ECE) are the graft\'s on its test set, measured when it was made; "after T" is with the temperature fitted on dev, which prediction applies.'),
    line,
  );
  const filter = h('input', { type: 'search', id: 'task-filter', placeholder: 'name, label, head or method', size: 28 });
  const [filterField] = field('Filter tasks', filter);
  const count = h('p', { class: 'count', id: 'task-count', 'aria-live': 'polite' });
  const table = h('table', { class: 'data', id: 'task-table' });
  main.append(h('div', { class: 'toolbar' }, filterField, count), h('div', { class: 'table-wrap', tabindex: 0, role: 'region', 'aria-label': 'Tasks table' }, table));
  let rows = [];
  let sortKey = 'name';
  let ascending = true;

  const draw = () => {
    const q = filter.value.trim().toLowerCase();
    const shown = rows
      .filter((r) => !q || [r.name, r.labels, r.head, r.method].some((x) => String(x).toLowerCase().includes(q)))
      .sort((a, b) => {
        const x = a[sortKey];
        const y = b[sortKey];
        const missing = (v) => v === undefined || v === null || (typeof v === 'number' && !Number.isFinite(v));
        if (missing(x) !== missing(y)) return missing(x) ? 1 : -1;
        const c = typeof x === 'number' && typeof y === 'number' ? x - y : String(x).localeCompare(String(y));
        return ascending ? c : -c;
      });
    const head = h('tr', {}, COLUMNS.map((c) => {
      const sorted = c.key === sortKey;
      const th = h('th', { scope: 'col', class: c.text ? '' : 'num', 'aria-sort': sorted ? (ascending ? 'ascending' : 'descending') : 'none' },
        h('button', {
          type: 'button', class: 'sort', 'data-key': c.key,
          onclick: () => {
            if (sortKey === c.key) ascending = !ascending;
            else {
              sortKey = c.key;
              ascending = true;
            }
            draw();
            table.querySelector(`button[data-key="${c.key}"]`).focus();
          },
        }, c.label, h('span', { class: 'arrow', 'aria-hidden': 'true' }, sorted ? (ascending ? ' ▲' : ' ▼') : '')));
      return th;
    }));
    const body = shown.map((r) => h('tr', { 'data-task': r.name }, COLUMNS.map((c) => {
      if (c.key === 'name') return h('th', { scope: 'row' }, h('a', { href: `#/tasks/${encodeURIComponent(r.name)}` }, r.name));
      return h('td', { class: c.text ? '' : 'num' }, c.show ? c.show(r[c.key]) : r[c.key]);
    })));
    replace(table, h('caption', { class: 'visually-hidden' }, 'Registered tasks; column headers sort'), h('thead', {}, head), h('tbody', {}, body));
    count.textContent = shown.length === rows.length ? `${rows.length} task${rows.length === 1 ? '' : 's'}` : `${shown.length} of ${rows.length} tasks shown`;
  };
  filter.addEventListener('input', draw);

  api.get('/v1/tasks', ctx.signal).then((list) => {
    rows = list.map(rowOf);
    if (!rows.length) {
      line.textContent = 'No tasks yet: upload a checkpoint and start a localization job on the Jobs page.';
    }
    draw();
  }).catch((e) => showError(line, e));
}

function metricsTable(summary, calibration) {
  const byName = Object.fromEntries(((summary.metrics && summary.metrics.variants) || []).map((v) => [v.name, v]));
  const variants = calibration.variants.length ? calibration.variants : Object.values(byName).map((v) => ({
    name: v.name, size: v.size, temperature: v.temperature,
    before: { accuracy: v.accuracy, ece: v.ece }, after: { ece: v.ece_after_temperature },
  }));
  if (!variants.length) return h('p', {}, 'No metrics were stored with this graft (compositions and some imported grafts have none).');
  return h('table', { class: 'data compact', id: 'metrics-table' },
    h('caption', {}, `Test set${calibration.variants.length ? ` (${int(calibration.variants[0].before.n)} examples)` : ''}`),
    h('thead', {}, h('tr', {},
      h('th', { scope: 'col' }, 'Model'), h('th', { scope: 'col', class: 'num' }, 'Parameters'),
      h('th', { scope: 'col', class: 'num' }, 'Accuracy'), h('th', { scope: 'col', class: 'num' }, 'ECE'),
      h('th', { scope: 'col', class: 'num' }, 'ECE after T'), h('th', { scope: 'col', class: 'num' }, 'T'),
      h('th', { scope: 'col', class: 'num' }, 'NLL'))),
    h('tbody', {}, variants.map((v) => h('tr', { class: v.name === 'graft' ? 'highlight' : '' },
      h('th', { scope: 'row' }, v.name), h('td', { class: 'num' }, int(v.size)),
      h('td', { class: 'num' }, pct(v.before.accuracy)), h('td', { class: 'num' }, pct(v.before.ece)),
      h('td', { class: 'num' }, pct(v.after.ece)), h('td', { class: 'num' }, fixed(v.temperature, 2)),
      h('td', { class: 'num' }, fixed(v.before.nll, 3))))));
}

function reliabilitySection(calibration) {
  const section = h('section', { 'aria-labelledby': 'h-reliability', class: 'card' }, h('h2', { id: 'h-reliability' }, 'Reliability'));
  if (!calibration.variants.length) {
    section.append(h('p', {}, 'This graft carries no evaluation, so there is no reliability diagram.'));
    return section;
  }
  const series = (which) => calibration.variants.map((v) => ({ name: v.name, bins: v[which].bins, ece: v[which].ece }));
  section.append(
    h('p', { class: 'note' }, 'Accuracy against confidence per bin on the test set; marker area ∝ examples in the bin; dashed: perfect calibration.'),
    h('div', { class: 'charts', id: 'reliability' },
      reliability('Before temperature scaling', series('before')),
      reliability('After temperature scaling', series('after'))),
  );
  return section;
}

function placementSection(p) {
  const section = h('section', { 'aria-labelledby': 'h-placement', class: 'card' }, h('h2', { id: 'h-placement' }, 'Placement'));
  const total = Math.max(1, p.graft_size);
  const share = p.counts.map((row) => row.map((c) => c / total));
  const labels = share.map((row) => row.map((v) => (v > 0 ? (100 * v).toFixed(1) : '')));
  const describe = (i, j) => [
    `${p.layers[i]} · ${p.modules[j]}`,
    `${int(p.counts[i][j])} grafted parameters (${pct(share[i][j])} of the graft)`,
    p.region_counts[i][j] ? `of ${int(p.region_counts[i][j])} in the region (${pct(p.counts[i][j] / p.region_counts[i][j], 3)} of them)` : 'no such tensor in the region',
  ];
  section.append(
    h('p', { class: 'note' }, `Where the ${int(p.graft_size)} grafted parameters live: % of the graft per encoder layer × module type (${int(p.region_size)} parameters in the region).`),
    h('div', { class: 'charts', id: 'placement' }, heatmap({
      title: 'Placement map: share of the graft per layer and module type',
      rows: p.layers, cols: p.modules, values: share, labels, cellW: 60, cellH: 24,
      tip: describe, name: (i, j) => describe(i, j).join('; '),
    })),
  );
  return section;
}

function tryIt(summary, ctx) {
  const text = h('textarea', { id: 'try-text', rows: 3, required: true, placeholder: 'Type a sentence to classify' });
  const calibrate = h('input', { type: 'checkbox', id: 'try-calibrate', checked: true });
  const result = h('div', { id: 'try-result', class: 'try-result', role: 'status', 'aria-live': 'polite' });
  const line = statusLine();
  const exampleBtn = h('button', { type: 'button', class: 'secondary', id: 'try-example' }, 'Use a held-out example');
  let examples = null;
  exampleBtn.addEventListener('click', async () => {
    try {
      if (!examples) examples = (await api.get(api.path`/v1/tasks/${summary.name}/examples?limit=50`, ctx.signal)).examples;
      const e = examples[Math.floor(Math.random() * examples.length)];
      text.value = e.text;
      line.classList.remove('error');
      line.textContent = `Held-out example, true label: ${e.label}`;
    } catch (e) {
      showError(line, e);
    }
  });
  const form = h('form', { id: 'try-form', class: 'try' },
    field('Text to classify', text)[0],
    h('div', { class: 'row' },
      h('label', { class: 'check' }, calibrate, ` Apply the calibration (${calibrationText(summary.temperature)})`)),
    h('div', { class: 'row' }, h('button', { type: 'submit', id: 'try-predict' }, 'Predict'), exampleBtn),
    line, result);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (!text.value.trim()) {
      showError(line, new Error('Type some text first.'));
      return;
    }
    line.classList.remove('error');
    line.textContent = 'Predicting…';
    try {
      const r = await api.post(api.path`/v1/tasks/${summary.name}/predict`, { inputs: [text.value], calibrate: calibrate.checked });
      const p = r.predictions[0];
      line.textContent = '';
      const probs = summary.labels.map((l) => [l, p.probabilities[l]]);
      replace(result,
        h('p', { class: 'predicted' }, 'Predicted: ', h('strong', { id: 'try-label' }, p.label),
          ` (calibration: ${r.calibration}${r.calibration === 'temperature' ? `, T = ${r.temperature.toFixed(2)}` : ''})`),
        h('ul', { class: 'probs', 'aria-label': 'Probability of each label' }, probs.map(([label, prob]) => {
          const bar = h('span', { class: 'bar', 'aria-hidden': 'true' });
          bar.style.width = `${(100 * prob).toFixed(2)}%`;
          return h('li', { 'data-label': label, 'data-probability': String(prob), class: label === p.label ? 'top' : '' },
            h('span', { class: 'plabel' }, label), h('span', { class: 'track', 'aria-hidden': 'true' }, bar),
            h('span', { class: 'pvalue' }, `${(100 * prob).toFixed(2)}%`));
        })));
    } catch (e) {
      showError(line, e);
    }
  });
  return h('section', { 'aria-labelledby': 'h-try', class: 'card' }, h('h2', { id: 'h-try' }, 'Try it'), form);
}

/** One task's page. */
export function renderTask(main, ctx, name) {
  const line = statusLine();
  main.append(
    h('p', { class: 'crumbs' }, h('a', { href: '#/tasks' }, 'Tasks'), ' / ', name),
    h('h1', { tabindex: -1 }, name),
    line,
  );
  line.textContent = 'Loading…';
  const base = api.path`/v1/tasks/${name}`;
  Promise.all([api.get(base, ctx.signal), api.get(`${base}/calibration`, ctx.signal), api.get(`${base}/placement`, ctx.signal)])
    .then(([summary, calibration, placement]) => {
      line.textContent = '';
      main.append(
        h('dl', { class: 'facts' },
          h('div', {}, h('dt', {}, 'Labels'), h('dd', {}, summary.labels.join(', '))),
          h('div', {}, h('dt', {}, 'Head'), h('dd', {}, summary.head)),
          h('div', {}, h('dt', {}, 'Method'), h('dd', {}, summary.method)),
          h('div', {}, h('dt', {}, 'Graft'), h('dd', {}, `${int(summary.graft_size)} parameters, ${fixed(summary.percent_of_model, 4)}% of the model`)),
          h('div', {}, h('dt', {}, 'Calibration'), h('dd', {}, calibrationText(summary.temperature))),
          h('div', {}, h('dt', {}, 'Gain kept'), h('dd', { id: 'task-retention' }, summary.retention
            ? `${pct(summary.retention.kept)} on dev, ${pct(summary.retention.test_kept)} on test (target ${pct(summary.retention.target, 0)}): ${summary.retention.summary}`
            : 'not recorded'))),
        summary.metrics && summary.metrics.retention
          ? h('section', { class: 'card', 'aria-labelledby': 'h-retention' }, h('h2', { id: 'h-retention' }, 'Retention curve'),
            retentionCurve('Gain kept against graft size', summary.metrics.retention, 'task-retention-chart'))
          : null,
        h('div', { class: 'grid2' },
          h('section', { 'aria-labelledby': 'h-metrics', class: 'card' }, h('h2', { id: 'h-metrics' }, 'Metrics'), metricsTable(summary, calibration)),
          tryIt(summary, ctx)),
        reliabilitySection(calibration),
        placementSection(placement),
      );
    })
    .catch((e) => showError(line, e));
}

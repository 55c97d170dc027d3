// Jobs: upload a checkpoint (a tar archive, or a folder packed into one here), start a localization job with
// its options, follow its progress live over server-sent events, cancel it, and see the variants it measured.

import { h, replace, pct, int, fixed, when, statusLine, showError, field } from './dom.js';
import * as api from './api.js';
import { lines, retentionCurve } from './charts.js';
import { kept, tar } from './tar.js';

const METHODS = [
  ['paper', 'paper (mask optimization)'],
  ['magnitude', 'magnitude (top-|Δ|)'],
  ['saliency', 'saliency (top |∇L ⊙ Δ|)'],
  ['l1', 'l1 (L1-penalized mask)'],
  ['refit', 'refit (values re-trained)'],
  ['learned', 'learned (mask for AdamW deltas)'],
  ['dare', 'dare (random drop + rescale)'],
];
const ENDED = ['succeeded', 'failed', 'cancelled', 'not_localized'];

function readOnlyNote(ctx) {
  return ctx.session.can_write ? null : h('p', { class: 'note readonly', id: 'readonly-note' },
    'Read-only: uploading checkpoints and starting or cancelling jobs need an admin key.');
}

function uploadCard(ctx, onUploaded) {
  const file = h('input', { type: 'file', id: 'upload-file', accept: '.tar,application/x-tar' });
  const folder = h('input', { type: 'file', id: 'upload-folder', webkitdirectory: true, multiple: true });
  const button = h('button', { type: 'submit', id: 'upload-btn' }, 'Upload');
  const line = statusLine();
  line.id = 'upload-status';
  const form = h('form', { class: 'card', id: 'upload-form', 'aria-labelledby': 'h-upload' },
    h('h2', { id: 'h-upload' }, '1. Upload a fine-tuned checkpoint'),
    h('fieldset', { disabled: !ctx.session.can_write },
      h('legend', { class: 'visually-hidden' }, 'Checkpoint'),
      h('div', { class: 'grid2' },
        field('Checkpoint archive (.tar)', file, 'config.json + model.safetensors (+ tokenizer files)')[0],
        field('or a checkpoint folder', folder, 'Only the files the server keeps are sent; pickle weights are left out')[0]),
      h('div', { class: 'row' }, button)),
    line);
  file.addEventListener('change', () => { folder.value = ''; });
  folder.addEventListener('change', () => { file.value = ''; });
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    line.classList.remove('error');
    let blob;
    let what;
    if (file.files.length) {
      blob = file.files[0];
      what = file.files[0].name;
    } else if (folder.files.length) {
      const all = [...folder.files];
      const keep = all.filter((f) => kept(f.name)).map((f) => ({ name: f.name, file: f }));
      if (!keep.length) {
        showError(line, new Error('The folder holds no checkpoint files (config.json, model.safetensors).'));
        return;
      }
      blob = tar(keep);
      what = `${keep.length} of ${all.length} files of the folder`;
    } else {
      showError(line, new Error('Choose a tar archive or a folder first.'));
      return;
    }
    button.disabled = true;
    line.textContent = `Uploading ${what} (${(blob.size / 1e6).toFixed(1)} MB)…`;
    try {
      const c = await api.upload('/v1/checkpoints', blob, 'application/x-tar');
      line.replaceChildren('Uploaded ', h('code', { id: 'upload-id' }, c.id), ` (${c.head} head; ${c.files.join(', ')}; ${(c.bytes / 1e6).toFixed(1)} MB).`);
      onUploaded(c);
    } catch (e) {
      showError(line, e);
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

function startCard(ctx) {
  const num = (id, value, attrs = {}) => h('input', { type: 'number', id, value, ...attrs });
  const checkpoint = h('input', { type: 'text', id: 'job-checkpoint', required: true, placeholder: 'ckpt-…', autocomplete: 'off' });
  const name = h('input', { type: 'text', id: 'job-name', required: true, pattern: '[A-Za-z0-9_\\-][A-Za-z0-9_.\\-]{0,63}', autocomplete: 'off' });
  const task = h('select', { id: 'job-task' });
  const method = h('select', { id: 'job-method' }, METHODS.map(([v, t]) => h('option', { value: v }, t)));
  const k = num('job-k', 16, { min: 1, max: 4096 });
  const seed = num('job-seed', 42, { min: 0 });
  const maxTest = num('job-max-test', '', { min: 1, placeholder: 'all' });
  const sparsity = h('input', { type: 'text', id: 'job-sparsity', value: '', inputmode: 'decimal', placeholder: 'search' });
  const retain = h('input', { type: 'text', id: 'job-retain', value: '0.95', inputmode: 'decimal' });
  const ceiling = h('input', { type: 'text', id: 'job-ceiling', value: '0.1', inputmode: 'decimal' });
  const anyway = h('input', { type: 'checkbox', id: 'job-register-anyway' });
  const epochs = num('job-epochs', 10, { min: 0, max: 1000 });
  const lr = h('input', { type: 'text', id: 'job-lr', value: '1e7', inputmode: 'decimal' });
  const maskSeed = num('job-mask-seed', 0, { min: 0 });
  const button = h('button', { type: 'submit', id: 'job-start' }, 'Start localization');
  const line = statusLine();
  const form = h('form', { class: 'card', id: 'job-form', 'aria-labelledby': 'h-start' },
    h('h2', { id: 'h-start' }, '2. Start a localization job'),
    h('fieldset', { disabled: !ctx.session.can_write },
      h('legend', { class: 'visually-hidden' }, 'Job options'),
      h('div', { class: 'grid3' },
        field('Checkpoint id', checkpoint)[0],
        field('Task name to register', name, 'letters, digits, - _ .')[0],
        field('Data set (built-in task or upload)', task)[0],
        field('Method', method)[0],
        field('Examples per class (K)', k)[0],
        field('Few-shot seed', seed)[0],
        field('Test examples at most', maxTest, 'empty: the whole test split')[0],
        field('Keep (share of the gain on dev)', retain, 'the smallest graft keeping it is searched')[0],
        field('Largest graft (share of the region)', ceiling)[0],
        field('Fixed sparsity (share of the region)', sparsity, 'empty: search the sizes')[0],
        field('Register even below the target', anyway)[0],
        field('Epochs', epochs)[0],
        field('Mask learning rate', lr)[0],
        field('Mask seed', maskSeed)[0]),
      h('div', { class: 'row' }, button)),
    line);
  api.get('/v1/datasets', ctx.signal).then((sets) => {
    // Built-in data sets are chosen by task name, uploaded ones (POST /v1/datasets) by id.
    task.append(...sets.map((d) => h('option', { value: d.id || d.name, 'data-name': d.name, disabled: !d.available },
      `${d.name} (${d.labels.join(' / ')})${d.id ? `, uploaded ${d.id}` : ''}${d.available ? '' : ' — data missing'}`)));
    if (!name.value) name.value = sets.find((d) => d.available)?.name || '';
  }).catch((e) => showError(line, e));
  let nameTouched = false;
  name.addEventListener('input', () => { nameTouched = true; });
  task.addEventListener('change', () => {
    if (!nameTouched) name.value = task.selectedOptions[0]?.dataset.name || task.value;
  });
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    line.classList.remove('error');
    const body = {
      checkpoint: checkpoint.value.trim(), task_name: name.value.trim(), method: method.value,
      k: Number(k.value), seed: Number(seed.value), epochs: Number(epochs.value),
      lr: Number(lr.value), mask_seed: Number(maskSeed.value),
      budget: { retain: Number(retain.value), ceiling: Number(ceiling.value) }, register_anyway: anyway.checked,
    };
    if (sparsity.value.trim()) body.sparsity = Number(sparsity.value);
    if (task.value.startsWith('ds-')) body.dataset = task.value; else body.task = task.value;
    if (maxTest.value) body.max_test = Number(maxTest.value);
    const numbers = [body.lr, body.budget.retain, body.budget.ceiling, body.sparsity ?? 0];
    if (!numbers.every(Number.isFinite)) {
      showError(line, new Error('Sparsity, target, ceiling and learning rate must be numbers (e.g. 1e-4).'));
      return;
    }
    button.disabled = true;
    try {
      const job = await api.post('/v1/localizations', body);
      location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (e) {
      showError(line, e);
      button.disabled = false;
    }
  });
  return { form, checkpoint };
}

function progressText(st) {
  const total = st.request.epochs;
  return `${st.state}: epoch ${st.epoch} of ${total}`;
}

/** The jobs view: upload, start, and every job. */
export function renderList(main, ctx) {
  main.append(
    h('h1', { tabindex: -1 }, 'Jobs'),
    h('p', { class: 'lede' }, 'A localization job finds the graft of a fine-tuned checkpoint: the few parameters whose fine-tuned values carry the task. It registers the task when it ends.'));
  const note = readOnlyNote(ctx);
  if (note) main.append(note);
  const start = startCard(ctx);
  main.append(uploadCard(ctx, (c) => { start.checkpoint.value = c.id; }), start.form);
  const line = statusLine();
  const table = h('table', { class: 'data', id: 'jobs-table' });
  main.append(h('section', { class: 'card', 'aria-labelledby': 'h-jobs' }, h('h2', { id: 'h-jobs' }, 'All jobs'), line, h('div', { class: 'table-wrap', tabindex: 0, role: 'region', 'aria-label': 'Jobs table' }, table)));
  const refresh = () => api.get('/v1/localizations', ctx.signal).then((jobs) => {
    if (!jobs.length) line.textContent = 'No jobs yet.';
    replace(table,
      h('caption', { class: 'visually-hidden' }, 'Localization jobs, newest first'),
      h('thead', {}, h('tr', {}, ['Job', 'Task', 'Data set', 'Method', 'State', 'Progress', 'Graft size', 'Created']
        .map((c, i) => h('th', { scope: 'col', class: i >= 6 && i < 7 ? 'num' : '' }, c)))),
      h('tbody', {}, jobs.map((j) => h('tr', { 'data-job': j.id },
        h('th', { scope: 'row' }, h('a', { href: `#/jobs/${encodeURIComponent(j.id)}` }, j.id)),
        h('td', {}, j.request.task_name), h('td', {}, j.request.task || j.request.dataset || 'inline'), h('td', {}, j.request.method),
        h('td', {}, h('span', { class: `state state-${j.state}` }, j.state)),
        h('td', {}, `epoch ${j.epoch} of ${j.request.epochs}`),
        h('td', { class: 'num' }, int(j.graft_size)), h('td', {}, when(j.created_unix))))));
    return jobs;
  }).catch((e) => showError(line, e));
  refresh();
  const timer = setInterval(refresh, 3000);
  ctx.signal.addEventListener('abort', () => clearInterval(timer));
}

function variantsTable(variants) {
  return h('table', { class: 'data compact', id: 'job-variants' },
    h('caption', {}, 'Variants on the test set'),
    h('thead', {}, h('tr', {}, ['Model', 'Parameters', 'Train', 'Dev', 'Test accuracy', 'ECE', 'ECE after T', 'T']
      .map((c, i) => h('th', { scope: 'col', class: i ? 'num' : '' }, c)))),
    h('tbody', {}, variants.map((v) => h('tr', { class: v.name === 'graft' ? 'highlight' : '' },
      h('th', { scope: 'row' }, v.name), h('td', { class: 'num' }, int(v.size)),
      h('td', { class: 'num' }, pct(v.train_accuracy)), h('td', { class: 'num' }, pct(v.dev_accuracy)),
      h('td', { class: 'num' }, pct(v.test.accuracy)), h('td', { class: 'num' }, pct(v.test.ece)),
      h('td', { class: 'num' }, pct(v.test_calibrated.ece)), h('td', { class: 'num' }, fixed(v.temperature, 2))))));
}

/** One job, followed live. */
export function renderJob(main, ctx, id) {
  const line = statusLine();
  main.append(h('p', { class: 'crumbs' }, h('a', { href: '#/jobs' }, 'Jobs'), ' / ', id), h('h1', { tabindex: -1 }, `Job ${id}`), line);
  const facts = h('dl', { class: 'facts', id: 'job-facts' });
  const bar = h('progress', { id: 'job-progress', max: 1, value: 0 });
  const barText = h('span', { id: 'job-progress-text' });
  const message = h('p', { id: 'job-message', role: 'status', 'aria-live': 'polite' });
  const cancel = h('button', { type: 'button', id: 'job-cancel', class: 'danger', hidden: true }, 'Cancel job');
  const chart = h('div', { class: 'charts', id: 'job-chart' });
  const log = h('ol', { id: 'job-log', class: 'log', 'aria-label': 'Progress events', tabindex: 0 });
  const result = h('div', { id: 'job-result' });
  main.append(facts,
    h('section', { class: 'card', 'aria-labelledby': 'h-progress' },
      h('h2', { id: 'h-progress' }, 'Progress'),
      h('div', { class: 'row' }, h('label', { for: 'job-progress' }, 'Epochs done'), bar, barText, cancel),
      message, chart,
      h('details', { open: true }, h('summary', {}, 'Events'), log)),
    result);
  const points = new Map();
  let last = null;

  const update = (st) => {
    last = st;
    const total = Math.max(1, st.request.epochs);
    bar.max = total;
    bar.value = Math.min(st.epoch, total);
    barText.textContent = progressText(st);
    message.textContent = st.error ? `${st.message}: ${st.error}` : st.message;
    replace(facts,
      ...[['Task', st.request.task_name], ['Data set', `${st.request.task || st.request.dataset || 'inline'} (K = ${st.request.k}, seed ${st.request.seed})`],
        ['Method', `${st.request.method}, ${st.request.sparsity ? `sparsity ${st.request.sparsity}` : 'size searched'}`], ['State', h('span', { class: `state state-${st.state}` }, st.state)],
        ['Started', when(st.started_unix)], ['Finished', when(st.finished_unix)]]
        .map(([k, v]) => h('div', {}, h('dt', {}, k), h('dd', {}, v))));
    cancel.hidden = !(ctx.session.can_write && !ENDED.includes(st.state));
    if (Number.isFinite(st.train_accuracy)) points.set(st.epoch, [st.train_accuracy, st.dev_accuracy]);
    if (points.size) {
      const xs = [...points.keys()].sort((a, b) => a - b);
      replace(chart, lines('Accuracy of the rounded mask by epoch', [
        { name: 'train', color: '#1f77b4', points: xs.map((x) => [x, points.get(x)[0]]) },
        { name: 'dev', color: '#d62728', points: xs.map((x) => [x, points.get(x)[1]]) },
      ], total));
    }
    const acc = Number.isFinite(st.train_accuracy) ? ` (train ${pct(st.train_accuracy)}, dev ${pct(st.dev_accuracy)})` : '';
    log.append(h('li', { 'data-state': st.state, 'data-epoch': st.epoch }, `${new Date().toLocaleTimeString('en-GB')} ${progressText(st)} — ${st.message}${acc}`));
    if (st.state === 'succeeded' || st.state === 'not_localized') {
      const t = st.timings || {};
      const r = st.retention;
      const registered = st.registered !== false;
      const taskLink = h('a', { href: `#/tasks/${encodeURIComponent(st.request.task_name)}`, id: 'job-task-link' }, st.request.task_name);
      replace(result, h('section', { class: 'card', 'aria-labelledby': 'h-result' },
        h('h2', { id: 'h-result' }, st.state === 'succeeded' ? 'Result' : 'Result: does not localize'),
        r ? h('p', { id: 'job-verdict', class: st.state === 'succeeded' ? '' : 'error', 'data-verdict': r.verdict }, r.summary) : null,
        r && r.advice && r.advice.length ? h('ul', { id: 'job-advice' }, r.advice.map((a) => h('li', {}, a))) : null,
        registered
          ? h('p', {}, `Graft of ${int(st.graft_size)} parameters registered as task `, taskLink,
            `. Localization ${fixed(t.localize_seconds, 1)} s, evaluation ${fixed(t.evaluate_seconds, 1)} s.`)
          : h('p', { id: 'job-not-registered' }, `Task ${st.request.task_name} was not registered (tick “Register even below the target” to register the best graft).`),
        r ? retentionCurve('Gain kept against graft size', r, 'job-retention-chart') : null,
        st.variants ? variantsTable(st.variants) : null));
    } else if (st.state === 'failed') {
      replace(result, h('p', { class: 'error', id: 'job-error' }, `Failed: ${st.error || 'unknown error'}`));
    }
  };

  cancel.addEventListener('click', async () => {
    cancel.disabled = true;
    try {
      await api.del(api.path`/v1/localizations/${id}`);
      message.textContent = 'Cancelling…';
    } catch (e) {
      showError(line, e);
      cancel.disabled = false;
    }
  });

  const follow = async () => {
    try {
      await api.events(api.path`/v1/localizations/${id}/events`, (name, data) => {
        if (name === 'status') update(JSON.parse(data));
      }, ctx.signal);
      if (!last || !ENDED.includes(last.state)) update(await api.get(api.path`/v1/localizations/${id}`, ctx.signal));
    } catch (e) {
      if (e.name !== 'AbortError') showError(line, e);
    }
  };
  follow();
}

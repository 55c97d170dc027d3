// Compose: choose member tasks and a rule for coordinates several grafts set; the union becomes a new task,
// and each member's accuracy is measured alone and under the composition on held-out examples of its own
// built-in data set.

import { h, replace, pct, statusLine, showError, field } from './dom.js';
import * as api from './api.js';
import { bars } from './charts.js';

/** The compose view. */
export function render(main, ctx) {
  main.append(
    h('h1', { tabindex: -1 }, 'Compose'),
    h('p', { class: 'lede' }, 'One graft holding several tasks: the union of their grafts, with each member keeping its own head. Does a member lose accuracy when the others\' skills are written into the same model?'));
  if (!ctx.session.can_write) {
    main.append(h('p', { class: 'note readonly', id: 'readonly-note' }, 'Read-only: a composition registers a new task, which needs an admin key.'));
  }
  const line = statusLine();
  const boxes = h('div', { class: 'checks', id: 'compose-tasks' });
  const order = h('p', { id: 'compose-order', class: 'note', 'aria-live': 'polite' });
  const name = h('input', { type: 'text', id: 'compose-name', required: true, autocomplete: 'off', pattern: '[A-Za-z0-9_\\-][A-Za-z0-9_.\\-]{0,63}' });
  const n = h('input', { type: 'number', id: 'compose-n', value: 100, min: 1, max: 1000 });
  const button = h('button', { type: 'submit', id: 'compose-btn' }, 'Compose');
  const form = h('form', { class: 'card', id: 'compose-form' },
    h('fieldset', { disabled: !ctx.session.can_write },
      h('legend', { class: 'visually-hidden' }, 'Composition'),
      h('fieldset', {}, h('legend', {}, 'Member tasks, in order'), boxes, order),
      h('fieldset', { class: 'inline' }, h('legend', {}, 'Rule for shared coordinates'),
        h('label', { class: 'check' }, h('input', { type: 'radio', name: 'rule', value: 'mean', checked: true }), ' mean of the members\' values'),
        h('label', { class: 'check' }, h('input', { type: 'radio', name: 'rule', value: 'last_wins' }), ' the last member wins')),
      h('div', { class: 'grid2' },
        field('Name of the composed task', name, 'letters, digits, - _ .')[0],
        field('Held-out examples per member', n, 'from each member\'s built-in data set')[0]),
      h('div', { class: 'row' }, button)),
    line);
  const out = h('div', { id: 'compose-out' });
  main.append(form, out);
  const picked = [];
  let nameTouched = false;
  name.addEventListener('input', () => { nameTouched = true; });
  const showOrder = () => {
    order.textContent = picked.length ? `Order: ${picked.join(' → ')}` : 'Pick two or more tasks; the order matters for "last wins".';
    if (!nameTouched) name.value = picked.join('_').slice(0, 64);
  };
  boxes.addEventListener('change', (ev) => {
    const v = ev.target.value;
    const at = picked.indexOf(v);
    if (ev.target.checked && at < 0) picked.push(v);
    if (!ev.target.checked && at >= 0) picked.splice(at, 1);
    showOrder();
  });
  api.get('/v1/tasks', ctx.signal).then((tasks) => {
    boxes.append(...tasks.map((t) => h('label', { class: 'check' }, h('input', { type: 'checkbox', value: t.name }), ` ${t.name}`)));
    showOrder();
  }).catch((e) => showError(line, e));

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    line.classList.remove('error');
    if (picked.length < 2) {
      showError(line, new Error('A composition needs at least two tasks.'));
      return;
    }
    const rule = form.querySelector('input[name=rule]:checked').value;
    const limit = Math.min(1000, Math.max(1, Number(n.value) || 100));
    button.disabled = true;
    try {
      const data = {};
      const missing = [];
      for (const t of picked) {
        line.textContent = `Fetching held-out examples of ${t}…`;
        try {
          data[t] = (await api.get(`${api.path`/v1/tasks/${t}/examples`}?limit=${limit}`, ctx.signal)).examples;
        } catch (e) {
          if (e.status !== 404) throw e;
          missing.push(t);
        }
      }
      line.textContent = 'Composing and measuring…';
      const r = await api.post('/v1/compositions', { name: name.value.trim(), tasks: picked, rule, data });
      line.textContent = missing.length ? `No built-in data for ${missing.join(', ')}: not measured.` : '';
      const rows = r.members.filter((m) => Number.isFinite(m.alone));
      replace(out, h('section', { class: 'card', 'aria-labelledby': 'h-compose-result' },
        h('h2', { id: 'h-compose-result' }, 'Result'),
        h('p', {}, 'Registered task ', h('a', { href: `#/tasks/${encodeURIComponent(r.task.name)}`, id: 'compose-task-link' }, r.task.name),
          `: ${r.task.graft_size.toLocaleString('en-US')} grafted parameters, rule ${rule.replace('_', ' ')}.`),
        h('table', { class: 'data compact', id: 'compose-table' },
          h('caption', {}, 'Accuracy of each member on its held-out examples'),
          h('thead', {}, h('tr', {}, ['Member', 'Examples', 'Alone', 'Composed', 'Change']
            .map((c, i) => h('th', { scope: 'col', class: i ? 'num' : '' }, c)))),
          h('tbody', {}, r.members.map((m) => h('tr', { 'data-task': m.task, 'data-alone': m.alone ?? '', 'data-composed': m.composed ?? '' },
            h('th', { scope: 'row' }, m.task), h('td', { class: 'num' }, m.examples ?? '—'),
            h('td', { class: 'num' }, pct(m.alone)), h('td', { class: 'num' }, pct(m.composed)),
            h('td', { class: 'num' }, Number.isFinite(m.alone) ? `${m.composed >= m.alone ? '+' : '−'}${Math.abs(100 * (m.composed - m.alone)).toFixed(1)} pts` : '—'))))),
        rows.length ? h('div', { class: 'charts' }, bars('Accuracy alone and composed', rows.map((m) => m.task), [
          { name: 'alone', color: '#7f7f7f', values: rows.map((m) => m.alone) },
          { name: 'composed', color: '#d62728', values: rows.map((m) => m.composed) },
        ], (v) => pct(v), 1)) : null));
    } catch (e) {
      showError(line, e);
    } finally {
      button.disabled = false;
    }
  });
}

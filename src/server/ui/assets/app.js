// The explorer's shell: hash routes (#/tasks, #/tasks/NAME, #/overlap, #/jobs, #/jobs/ID, #/compose), the
// API-key field and what the key may do, focus management between views.

import { h } from './dom.js';
import * as api from './api.js';
import { hideTip } from './charts.js';
import * as tasks from './tasks.js';
import * as overlap from './overlap.js';
import * as jobs from './jobs.js';
import * as compose from './compose.js';

const ROUTES = [
  [/^#\/tasks\/(.+)$/, 'tasks', (main, ctx, m) => tasks.renderTask(main, ctx, decodeURIComponent(m[1]))],
  [/^#\/tasks\/?$/, 'tasks', (main, ctx) => tasks.renderList(main, ctx)],
  [/^#\/overlap\/?$/, 'overlap', (main, ctx) => overlap.render(main, ctx)],
  [/^#\/jobs\/(.+)$/, 'jobs', (main, ctx, m) => jobs.renderJob(main, ctx, decodeURIComponent(m[1]))],
  [/^#\/jobs\/?$/, 'jobs', (main, ctx) => jobs.renderList(main, ctx)],
  [/^#\/compose\/?$/, 'compose', (main, ctx) => compose.render(main, ctx)],
];

const ctx = { session: null, signal: null };
let controller = null;
let firstView = true;

const ROLE_TEXT = {
  open: ['open', 'No API keys are configured: everything is allowed.'],
  admin: ['admin', 'This key may change state.'],
  reader: ['read-only', 'This key may read and predict; uploads, jobs and compositions need an admin key.'],
  none: ['key needed', 'This server requires an API key.'],
  invalid: ['invalid key', 'The server refused this key.'],
};

async function refreshSession() {
  try {
    ctx.session = await api.get('/v1/session');
  } catch (e) {
    const role = e.status === 401 ? (api.getKey() ? 'invalid' : 'none') : 'none';
    ctx.session = { role, can_write: false, auth_required: true, error: e.message };
  }
  const [text, title] = ROLE_TEXT[ctx.session.role] || [ctx.session.role, ''];
  const badge = document.getElementById('role');
  badge.textContent = text;
  badge.title = title;
  badge.className = `role role-${ctx.session.role}`;
}

function keyNeeded(main) {
  main.append(
    h('h1', { tabindex: -1 }, 'An API key is needed'),
    h('p', {}, ctx.session.role === 'invalid'
      ? 'The server refused the key you entered. Enter another one in the API key field above.'
      : 'This server requires an API key. Enter one in the API key field above; it is kept only for this browser tab.'),
  );
}

async function route() {
  hideTip();
  const hash = location.hash;
  if (!hash || hash === '#' || hash === '#/') {
    location.replace('#/tasks');
    return;
  }
  if (!hash.startsWith('#/')) return;
  if (controller) controller.abort();
  controller = new AbortController();
  ctx.signal = controller.signal;
  const main = document.getElementById('main');
  main.replaceChildren();
  const found = ROUTES.find(([re]) => re.test(hash));
  for (const a of document.querySelectorAll('nav a')) {
    if (found && a.dataset.section === found[1]) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (!found) {
    main.append(h('h1', { tabindex: -1 }, 'Not found'), h('p', {}, h('a', { href: '#/tasks' }, 'Back to the tasks')));
  } else if (ctx.session.role === 'none' || ctx.session.role === 'invalid') {
    keyNeeded(main);
  } else {
    const [re, section, view] = found;
    document.title = `${section[0].toUpperCase()}${section.slice(1)} · skillgraft explorer`;
    view(main, ctx, hash.match(re));
  }
  const heading = main.querySelector('h1');
  if (heading && !firstView) heading.focus();
  firstView = false;
}

function setupKeyForm() {
  const form = document.getElementById('key-form');
  const input = document.getElementById('api-key');
  input.value = api.getKey();
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    api.setKey(input.value.trim());
    await refreshSession();
    route();
  });
  document.getElementById('forget-key').addEventListener('click', async () => {
    input.value = '';
    api.setKey('');
    await refreshSession();
    route();
  });
}

function setupSkipLink() {
  document.querySelector('.skip').addEventListener('click', (ev) => {
    ev.preventDefault();
    const main = document.getElementById('main');
    (main.querySelector('h1') || main).focus();
  });
}

async function start() {
  setupKeyForm();
  setupSkipLink();
  await refreshSession();
  window.addEventListener('hashchange', route);
  document.addEventListener('keydown', (ev) => {
    if (ev.key === 'Escape') hideTip();
  });
  route();
}

start();

// Drives the web explorer in Debian's headless Chromium against a running skillgraft server (started by
// tests/ui.rs) and writes what it saw to $SG_ARTIFACTS/report.json, with a screenshot of every page. The Rust
// test compares the report with the API's own answers; this script only fails when a page never shows what it
// waits for. Inputs (environment): SG_BASE (the server), SG_SCENARIO (JSON: admin_key, reader_key,
// checkpoint_tar, checkpoint_dir, task, filter, try_text, job {task_name, task, k, max_test, epochs},
// compose {tasks, name, examples}), SG_ARTIFACTS, SG_CHROMIUM, SG_NODE_MODULES, and optionally SG_DOCS_DIR
// (where to copy one screenshot of each page).

import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';

const env = (k) => {
  const v = process.env[k];
  if (v === undefined) throw new Error(`missing environment variable ${k}`);
  return v;
};
const require = createRequire(path.join(env('SG_NODE_MODULES'), '/'));
const { chromium } = require('playwright-core');
const axeSource = fs.readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

const base = env('SG_BASE');
const artifacts = env('SG_ARTIFACTS');
fs.mkdirSync(artifacts, { recursive: true });
const sc = JSON.parse(env('SG_SCENARIO'));
const { job } = sc;
const report = { requests: [], console: [], page_errors: [], axe: {}, screenshots: {}, timings_ms: {} };
const started = Date.now();
const log = (...a) => console.error(`[ui ${((Date.now() - started) / 1000).toFixed(1)}s]`, ...a);

const browser = await chromium.launch({
  executablePath: env('SG_CHROMIUM'),
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-default-apps', '--disable-extensions',
    '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1'],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, deviceScaleFactor: 1 });
context.on('request', (r) => report.requests.push(r.url()));
const page = await context.newPage();
page.on('console', (m) => {
  if (m.type() === 'error' || m.type() === 'warning') report.console.push(`${m.type()}: ${m.text()}`);
});
page.on('pageerror', (e) => report.page_errors.push(String(e && e.stack ? e.stack : e)));
page.setDefaultTimeout(60_000);

async function timed(name, f) {
  const t = Date.now();
  const out = await f();
  report.timings_ms[name] = Date.now() - t;
  log(name, `${Date.now() - t} ms`);
  return out;
}

async function go(hash, ready) {
  await page.evaluate((h) => { location.hash = h; }, hash);
  await page.waitForSelector(ready);
}

async function useKey(key, role) {
  await page.fill('#api-key', key);
  await page.click('#key-form button[type=submit]');
  await page.waitForFunction((r) => document.getElementById('role').textContent === r, role);
}

async function audit(name) {
  await page.evaluate(axeSource);
  const result = await page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
  report.axe[name] = result.violations.map((v) => ({
    id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.length, target: v.nodes.slice(0, 3).map((n) => n.target.join(' ')),
  }));
}

async function shot(name) {
  await page.evaluate(() => document.getElementById('tooltip').hidden = true);
  const file = path.join(artifacts, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  report.screenshots[name] = file;
  if (process.env.SG_DOCS_DIR) fs.copyFileSync(file, path.join(process.env.SG_DOCS_DIR, `${name}.png`));
}

const tableNames = () => page.$$eval('#task-table tbody tr', (rows) => rows.map((r) => r.dataset.task));

try {
  // The root redirects to the explorer; without a key it asks for one.
  await timed('first_load', async () => {
    await page.goto(`${base}/`);
    await page.waitForSelector('main h1');
  });
  report.landing_url = page.url();
  report.no_key_heading = await page.textContent('main h1');

  // A read-only key: the tasks are listed, uploads and compositions are disabled.
  await useKey(sc.reader_key, 'read-only');
  await page.waitForSelector('#task-table tbody tr');
  report.reader_tasks = await tableNames();
  await go('#/jobs', '#upload-form');
  report.reader_upload_disabled = await page.$eval('#upload-form fieldset', (f) => f.disabled);
  report.reader_job_disabled = await page.$eval('#job-form fieldset', (f) => f.disabled);
  report.reader_note = await page.textContent('#readonly-note');
  await go('#/compose', '#compose-form');
  report.reader_compose_disabled = await page.$eval('#compose-form > fieldset', (f) => f.disabled);

  // An admin key.
  await useKey(sc.admin_key, 'admin');

  // Tasks: the table, sorting, filtering.
  await timed('tasks_page', () => go('#/tasks', '#task-table tbody tr'));
  report.tasks = await tableNames();
  await page.click('button.sort[data-key="method"]');
  report.sorted_by_method = {
    aria_sort: await page.$eval('button.sort[data-key="method"]', (b) => b.closest('th').getAttribute('aria-sort')),
    methods: await page.$$eval('#task-table tbody tr', (rows) => rows.map((r) => r.children[3].textContent)),
  };
  await page.fill('#task-filter', sc.filter);
  report.filtered = await tableNames();
  report.filtered_count_text = await page.textContent('#task-count');
  await page.fill('#task-filter', '');
  await page.waitForFunction((n) => document.querySelectorAll('#task-table tbody tr').length === n, report.tasks.length);
  await audit('tasks');
  await shot('tasks');

  // Keyboard: the first Tab reaches the skip link; the nav links work from the keyboard; focus moves to the
  // new view's heading.
  await page.reload();
  await page.waitForSelector('#task-table tbody tr');
  await page.keyboard.press('Tab');
  report.first_tab = await page.evaluate(() => document.activeElement.textContent.trim());
  let reached = false;
  for (let i = 0; i < 12 && !reached; i++) {
    await page.keyboard.press('Tab');
    reached = await page.evaluate(() => document.activeElement.matches('nav a[data-section="overlap"]'));
  }
  report.keyboard_reached_overlap_link = reached;
  if (reached) {
    await page.keyboard.press('Enter');
    await page.waitForSelector('#overlap-heatmap g.cell');
    report.keyboard_hash = await page.evaluate(() => location.hash);
    report.keyboard_focus_after_nav = await page.evaluate(() => `${document.activeElement.tagName} ${document.activeElement.textContent}`);
  }

  // A task's page: metrics, reliability diagrams, placement map, "try it".
  await timed('task_page', () => go(`#/tasks/${encodeURIComponent(sc.task)}`, '#placement svg'));
  report.task = {
    name: sc.task,
    reliability_panels: await page.$$eval('#reliability svg', (s) => s.length),
    reliability_markers: await page.$$eval('#reliability circle.bin', (c) => c.length),
    placement_cells: await page.$$eval('#placement g.cell', (c) => c.length),
    metrics_rows: await page.$$eval('#metrics-table tbody tr', (r) => r.map((x) => x.children[0].textContent)),
  };
  await page.focus('#placement g.cell');
  report.task.placement_tooltip = await page.textContent('#tooltip');
  await page.fill('#try-text', sc.try_text);
  await timed('try_it', async () => {
    await page.click('#try-predict');
    await page.waitForSelector('#try-result li');
  });
  report.try_it = {
    label: await page.textContent('#try-label'),
    probabilities: await page.$$eval('#try-result li', (items) => items.map((li) => ({
      label: li.dataset.label, probability: Number(li.dataset.probability), shown: li.querySelector('.pvalue').textContent,
    }))),
  };
  await audit('task');
  await shot('task');

  // Overlap: the heatmap, its tooltip, and a pair's breakdown opened from the keyboard.
  await timed('overlap_page', () => go('#/overlap', '#overlap-heatmap g.cell'));
  report.overlap = {
    cells: await page.$$eval('#overlap-heatmap g.cell', (c) => c.length),
    order: await page.$$eval('#overlap-heatmap g.cell[data-col="0"]', (c) => c.map((g) => g.getAttribute('aria-label').split(';')[0])),
  };
  await page.hover('#overlap-heatmap g.cell[data-row="0"][data-col="1"]');
  report.overlap.tooltip = await page.textContent('#tooltip');
  await page.focus('#overlap-heatmap g.cell[data-row="0"][data-col="0"]');
  await page.keyboard.press('ArrowRight');
  await page.keyboard.press('Enter');
  await page.waitForSelector('#breakdown-table tbody tr');
  report.overlap.breakdown_title = await page.textContent('#h-breakdown');
  report.overlap.breakdown_layers = await page.$$eval('#breakdown-table tbody tr', (r) => r.map((x) => x.children[0].textContent));
  report.overlap.breakdown_shared = await page.$$eval('#breakdown-table tbody tr', (r) => r.map((x) => Number(x.children[3].textContent.replace(/,/g, ''))));
  await audit('overlap');
  await shot('overlap');

  // Jobs: upload the checkpoint as a tar archive and as a folder, start a job, follow it to the end.
  await go('#/jobs', '#upload-form');
  await timed('upload_tar', async () => {
    await page.setInputFiles('#upload-file', sc.checkpoint_tar);
    await page.click('#upload-btn');
    await page.waitForSelector('#upload-id');
  });
  report.upload_tar_id = await page.textContent('#upload-id');
  await page.evaluate(() => document.getElementById('upload-status').replaceChildren());
  await timed('upload_folder', async () => {
    await page.setInputFiles('#upload-folder', sc.checkpoint_dir);
    await page.click('#upload-btn');
    await page.waitForSelector('#upload-id');
  });
  report.upload_folder_id = await page.textContent('#upload-id');
  report.upload_folder_status = await page.textContent('#upload-status');
  report.job_form_checkpoint = await page.inputValue('#job-checkpoint');
  await page.selectOption('#job-task', job.task);
  await page.fill('#job-name', job.task_name);
  await page.fill('#job-k', String(job.k));
  await page.fill('#job-max-test', String(job.max_test));
  await page.fill('#job-epochs', String(job.epochs));
  if (job.sparsity !== undefined) await page.fill('#job-sparsity', String(job.sparsity));
  if (job.retain !== undefined) await page.fill('#job-retain', String(job.retain));
  await audit('jobs');
  await page.click('#job-start');
  await page.waitForURL(/#\/jobs\/job-/);
  report.job_id = decodeURIComponent(page.url().split('#/jobs/')[1]);
  await timed('job_run', () => page.waitForSelector('#job-log li[data-state="succeeded"], #job-log li[data-state="failed"], #job-log li[data-state="not_localized"]', { timeout: 300_000 }));
  report.job_retention_points = await page.$$eval('#job-retention-chart circle.point', (c) => c.length);
  report.job_verdict = await page.$eval('#job-verdict', (p) => p.dataset.verdict).catch(() => null);
  report.job_log = await page.$$eval('#job-log li', (items) => items.map((li) => ({ state: li.dataset.state, epoch: Number(li.dataset.epoch), text: li.textContent })));
  report.job_progress = await page.$eval('#job-progress', (p) => ({ value: p.value, max: p.max }));
  report.job_progress_text = await page.textContent('#job-progress-text');
  report.job_chart_points = await page.$$eval('#job-chart circle', (c) => c.length);
  report.job_variants = await page.$$eval('#job-variants tbody tr', (r) => r.map((x) => x.children[0].textContent));
  report.job_cancel_hidden = await page.$eval('#job-cancel', (b) => b.hidden);
  await audit('job');
  await shot('job');

  // A second job, cancelled from its page.
  await go('#/jobs', '#job-form');
  await page.waitForFunction(() => document.getElementById('job-task').options.length > 0);
  await page.fill('#job-checkpoint', report.upload_tar_id);
  await page.selectOption('#job-task', job.task);
  await page.fill('#job-name', `${job.task_name}-cancelled`);
  await page.fill('#job-k', String(job.k));
  await page.fill('#job-max-test', String(job.max_test));
  await page.fill('#job-epochs', '1000');
  await page.click('#job-start');
  await page.waitForURL(/#\/jobs\/job-/);
  report.cancel_job_id = decodeURIComponent(page.url().split('#/jobs/')[1]);
  await page.waitForSelector('#job-cancel:not([hidden])');
  await page.click('#job-cancel');
  await page.waitForSelector('#job-log li[data-state="cancelled"]', { timeout: 120_000 });
  report.cancel_states = await page.$$eval('#job-log li', (items) => items.map((li) => li.dataset.state));
  await go('#/jobs', '#jobs-table tbody tr');
  report.jobs_table = await page.$$eval('#jobs-table tbody tr', (r) => r.map((x) => x.dataset.job));
  await shot('jobs');

  // Compose: members in order, a rule, each member's accuracy alone and composed.
  await go('#/compose', '#compose-tasks input');
  for (const t of sc.compose.tasks) await page.check(`#compose-tasks input[value="${t}"]`);
  await page.check('input[name=rule][value="mean"]');
  await page.fill('#compose-name', sc.compose.name);
  await page.fill('#compose-n', String(sc.compose.examples));
  report.compose_order = await page.textContent('#compose-order');
  await timed('compose', async () => {
    await page.click('#compose-btn');
    await page.waitForSelector('#compose-table tbody tr');
  });
  report.compose = await page.$$eval('#compose-table tbody tr', (rows) => rows.map((r) => ({
    task: r.dataset.task, alone: Number(r.dataset.alone), composed: Number(r.dataset.composed), examples: Number(r.children[1].textContent),
  })));
  await audit('compose');
  await shot('compose');
} catch (e) {
  report.error = String(e && e.stack ? e.stack : e);
  try {
    await page.screenshot({ path: path.join(artifacts, 'failure.png'), fullPage: true });
  } catch {
    // The page is gone: the error above says why.
  }
} finally {
  report.total_ms = Date.now() - started;
  fs.writeFileSync(path.join(artifacts, 'report.json'), JSON.stringify(report, null, 2));
  await browser.close();
}
if (report.error) {
  console.error(report.error);
  process.exit(1);
}

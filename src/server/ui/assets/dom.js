// DOM helpers: element builders for HTML and SVG, and number formatting. No inline styles anywhere (the
// page's Content-Security-Policy forbids them); sizes and positions go through CSSOM or SVG attributes.

const SVG_NS = 'http://www.w3.org/2000/svg';

function build(el, attrs, children) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'value' || k === 'checked' || k === 'disabled' || k === 'selected') el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** An HTML element: h('a', {href: '#/tasks'}, 'Tasks'). */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element. */
export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

/** Replaces an element's children. */
export function replace(el, ...children) {
  el.replaceChildren();
  return build(el, {}, children);
}

/** 0.1234 → "12.3%" (or "—" when missing). */
export function pct(x, digits = 1) {
  return Number.isFinite(x) ? `${(100 * x).toFixed(digits)}%` : '—';
}

/** 12345 → "12,345". */
export function int(x) {
  return Number.isFinite(x) ? Math.round(x).toLocaleString('en-US') : '—';
}

/** A number with a fixed number of decimals, or "—". */
export function fixed(x, digits = 3) {
  return Number.isFinite(x) ? x.toFixed(digits) : '—';
}

/** Seconds since the epoch → "2026-11-28 21:45". */
export function when(unix) {
  if (!unix) return '—';
  const d = new Date(unix * 1000);
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}`;
}

/** A status line: role=status, so screen readers announce changes. */
export function statusLine(cls = 'status') {
  return h('p', { class: cls, role: 'status', 'aria-live': 'polite' });
}

/** Shows an error (an ApiError or any Error) in a status line. */
export function showError(line, err) {
  line.classList.add('error');
  line.textContent = err && err.message ? err.message : String(err);
}

/** A labelled form control: returns [wrapper, control]. */
export function field(label, control, hint) {
  const id = control.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  control.id = id;
  const parts = [h('label', { for: id }, label), control];
  if (hint) {
    const hid = `${id}-hint`;
    control.setAttribute('aria-describedby', hid);
    parts.push(h('small', { id: hid, class: 'hint' }, hint));
  }
  return [h('div', { class: 'field' }, parts), control];
}

// The public API, called with the key the user typed (kept in sessionStorage: it lives as long as the tab).
// Server-sent events are read with fetch, because EventSource cannot send an Authorization header.

const KEY = 'skillgraft.apiKey';

/** The key in use ('' when none). */
export function getKey() {
  return sessionStorage.getItem(KEY) || '';
}

/** Keeps (or, with '', forgets) the key for this browser session. */
export function setKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

/** An error answer of the API: status, code and message. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function headers(extra) {
  const out = { ...extra };
  const key = getKey();
  if (key) out.Authorization = `Bearer ${key}`;
  return out;
}

async function call(method, path, body, contentType, signal) {
  let payload;
  let extra = {};
  if (body instanceof Blob || body instanceof Uint8Array) {
    payload = body;
    extra = { 'Content-Type': contentType || 'application/octet-stream' };
  } else if (body !== undefined) {
    payload = JSON.stringify(body);
    extra = { 'Content-Type': 'application/json' };
  }
  const resp = await fetch(path, { method, headers: headers(extra), body: payload, signal });
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!resp.ok) {
    const e = data && data.error;
    throw new ApiError(resp.status, e ? e.code : 'error', e ? e.message : text || resp.statusText);
  }
  return data;
}

/** GET a JSON route. */
export const get = (path, signal) => call('GET', path, undefined, undefined, signal);
/** POST JSON. */
export const post = (path, body) => call('POST', path, body);
/** DELETE. */
export const del = (path) => call('DELETE', path);
/** POST raw bytes (a tar archive). */
export const upload = (path, blob, contentType) => call('POST', path, blob, contentType);

/** A path with its segment escaped: path`/v1/tasks/${name}`. */
export function path(strings, ...values) {
  return strings.reduce((out, s, i) => out + s + (i < values.length ? encodeURIComponent(values[i]) : ''), '');
}

/**
 * Follows a server-sent event stream until it ends or `signal` aborts; calls onEvent(name, data) per event.
 */
export async function events(url, onEvent, signal) {
  const resp = await fetch(url, { headers: headers({ Accept: 'text/event-stream' }), signal });
  if (!resp.ok) {
    let message = resp.statusText;
    try {
      message = (await resp.json()).error.message;
    } catch {
      // Not our JSON error body: keep the status text.
    }
    throw new ApiError(resp.status, 'error', message);
  }
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n?/g, '\n');
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (!line || line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let v = colon < 0 ? '' : line.slice(colon + 1);
        if (v.startsWith(' ')) v = v.slice(1);
        if (field === 'event') name = v;
        else if (field === 'data') data.push(v);
      }
      if (data.length) onEvent(name, data.join('\n'));
    }
  }
}

// Charts as plain SVG, in the look of the study's plots (src/study/svg.rs): the same white-to-dark-blue scale
// for heatmaps, the same series colours and marker sizes for reliability diagrams, Helvetica/Arial text.

import { h, s } from './dom.js';

/** Series colours of the study's reliability diagrams. */
export const COLORS = {
  'base+head': '#7f7f7f',
  'base patch': '#2ca02c',
  graft: '#d62728',
  'fine-tuned': '#1f77b4',
};
const EXTRA = ['#9467bd', '#8c564b', '#e377c2', '#17becf'];

/** The colour of a named series. */
export function colorOf(name, i = 0) {
  return COLORS[name] || EXTRA[i % EXTRA.length];
}

/** The study's heatmap scale: t in [0, 1] from #f7fbff to #084594. */
export function blues(t) {
  const x = Number.isFinite(t) ? Math.min(1, Math.max(0, t)) : 0;
  const lerp = (a, b) => Math.round(a + (b - a) * x);
  return [lerp(247, 8), lerp(251, 69), lerp(255, 148)];
}

const hex = (rgb) => `#${rgb.map((v) => v.toString(16).padStart(2, '0')).join('')}`;

function luminance([r, g, b]) {
  const c = (v) => {
    const x = v / 255;
    return x <= 0.03928 ? x / 12.92 : ((x + 0.055) / 1.055) ** 2.4;
  };
  return 0.2126 * c(r) + 0.7152 * c(g) + 0.0722 * c(b);
}

/** White or near-black text, whichever contrasts more with the background. */
export function inkOn(rgb) {
  const l = luminance(rgb);
  return (1.05) / (l + 0.05) >= (l + 0.05) / (luminance([34, 34, 34]) + 0.05) ? '#ffffff' : '#222222';
}

const tooltip = () => document.getElementById('tooltip');

/** Shows the shared tooltip near a point (page coordinates) with lines of text. */
export function showTip(lines, x, y) {
  const tip = tooltip();
  if (!tip) return;
  tip.replaceChildren(...lines.map((l, i) => (i === 0 ? h('strong', {}, l) : h('div', {}, l))));
  tip.hidden = false;
  const w = tip.offsetWidth;
  const left = Math.min(x + 14, window.scrollX + document.documentElement.clientWidth - w - 8);
  tip.style.left = `${Math.max(4, left)}px`;
  tip.style.top = `${y + 14}px`;
}

/** Hides the tooltip. */
export function hideTip() {
  const tip = tooltip();
  if (tip) tip.hidden = true;
}

/**
 * A heatmap: rows × cols of values (colour scaled to [0, max]), a text in each cell, a tooltip per cell, and
 * keyboard access (one tab stop; arrow keys move between cells; Enter/Space activates).
 * opts: {title, rows, cols, values, labels, tip(i, j) → lines, name(i, j) → accessible name, onCell(i, j),
 *        max, cellW, cellH, rowLabelW}
 */
export function heatmap(opts) {
  const { rows, cols, values } = opts;
  const cellH = opts.cellH || 28;
  const widest = Math.max(0, ...opts.labels.flat().map((l) => String(l).length));
  const cellW = Math.max(opts.cellW || 64, widest * 7 + 12);
  const rowLabelW = opts.rowLabelW || 8 + 7 * Math.max(4, ...rows.map((r) => r.length));
  const colLabelH = 12 + 5.2 * Math.max(4, ...cols.map((c) => c.length));
  const width = rowLabelW + cols.length * cellW + 16;
  const height = colLabelH + rows.length * cellH + 8;
  const max = opts.max ?? Math.max(0, ...values.flat().filter(Number.isFinite));
  const svg = s('svg', {
    class: 'chart heatmap', width, height, viewBox: `0 0 ${width} ${height}`, role: 'group',
    'aria-label': opts.title,
  });
  cols.forEach((c, j) => {
    const x = rowLabelW + (j + 0.5) * cellW;
    const y = colLabelH - 6;
    svg.append(s('text', { x, y, class: 'axis', transform: `rotate(-35 ${x} ${y})`, 'aria-hidden': 'true' }, c));
  });
  const cells = [];
  rows.forEach((r, i) => {
    const y = colLabelH + i * cellH;
    svg.append(s('text', { x: rowLabelW - 6, y: y + cellH * 0.64, class: 'axis', 'text-anchor': 'end', 'aria-hidden': 'true' }, r));
    cols.forEach((c, j) => {
      const v = values[i][j];
      const rgb = blues(max > 0 ? v / max : 0);
      const x = rowLabelW + j * cellW;
      const g = s('g', {
        class: 'cell', tabindex: -1, 'data-row': i, 'data-col': j,
        role: opts.onCell ? 'button' : 'img', 'aria-label': opts.name(i, j),
      },
      s('rect', { x, y, width: cellW, height: cellH, fill: hex(rgb), stroke: '#ffffff' }),
      s('text', { x: x + cellW / 2, y: y + cellH * 0.64, 'text-anchor': 'middle', fill: inkOn(rgb), class: 'cell-label', 'aria-hidden': 'true' },
        opts.labels[i][j]));
      const tip = (ev) => {
        const box = g.getBoundingClientRect();
        const px = ev && ev.pageX !== undefined ? ev.pageX : box.right + window.scrollX;
        const py = ev && ev.pageY !== undefined ? ev.pageY : box.top + window.scrollY;
        showTip(opts.tip(i, j), px, py);
      };
      g.addEventListener('mousemove', tip);
      g.addEventListener('mouseleave', hideTip);
      g.addEventListener('focus', () => tip());
      g.addEventListener('blur', hideTip);
      if (opts.onCell) g.addEventListener('click', () => opts.onCell(i, j));
      cells.push(g);
      svg.append(g);
    });
  });
  if (cells.length) cells[0].setAttribute('tabindex', '0');
  svg.addEventListener('keydown', (ev) => {
    const g = ev.target.closest && ev.target.closest('g.cell');
    if (!g) return;
    let i = Number(g.dataset.row);
    let j = Number(g.dataset.col);
    const moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
    if (moves[ev.key]) {
      i = Math.min(rows.length - 1, Math.max(0, i + moves[ev.key][0]));
      j = Math.min(cols.length - 1, Math.max(0, j + moves[ev.key][1]));
      const next = cells[i * cols.length + j];
      g.setAttribute('tabindex', '-1');
      next.setAttribute('tabindex', '0');
      next.focus();
      ev.preventDefault();
    } else if ((ev.key === 'Enter' || ev.key === ' ') && opts.onCell) {
      opts.onCell(i, j);
      ev.preventDefault();
    }
  });
  return svg;
}

function frame(svg, x0, y0, size, xLabel, yLabel) {
  svg.append(s('rect', { x: x0, y: y0, width: size, height: size, fill: 'none', stroke: '#888888' }));
  for (const t of [0, 0.5, 1]) {
    svg.append(s('text', { x: x0 + t * size, y: y0 + size + 14, 'text-anchor': 'middle', class: 'tick' }, t.toFixed(1)));
    svg.append(s('text', { x: x0 - 4, y: y0 + (1 - t) * size + 3, 'text-anchor': 'end', class: 'tick' }, t.toFixed(1)));
  }
  svg.append(s('text', { x: x0 + size / 2, y: y0 + size + 30, 'text-anchor': 'middle', class: 'axis' }, xLabel));
  const ly = y0 + size / 2;
  svg.append(s('text', { x: x0 - 34, y: ly, 'text-anchor': 'middle', class: 'axis', transform: `rotate(-90 ${x0 - 34} ${ly})` }, yLabel));
}

/**
 * One reliability-diagram panel: accuracy against mean confidence per bin, marker area ∝ examples in the bin,
 * dashed diagonal = perfect calibration. series: [{name, bins: [{confidence, accuracy, count}], ece}].
 */
export function reliability(title, series, size = 220) {
  const x0 = 50;
  const y0 = 30;
  const width = x0 + size + 16;
  const height = y0 + size + 44 + 14 * series.length;
  const summary = series.map((se) => `${se.name} ECE ${(100 * se.ece).toFixed(1)}%`).join(', ');
  const svg = s('svg', {
    class: 'chart reliability', width, height, viewBox: `0 0 ${width} ${height}`, role: 'img',
    'aria-label': `${title}: ${summary}`,
  });
  svg.append(s('text', { x: x0, y: 18, class: 'panel-title' }, title));
  frame(svg, x0, y0, size, 'confidence', 'accuracy');
  svg.append(s('line', { x1: x0, y1: y0 + size, x2: x0 + size, y2: y0, stroke: '#aaaaaa', 'stroke-dasharray': '4 3' }));
  const px = (c) => x0 + c * size;
  const py = (a) => y0 + (1 - a) * size;
  series.forEach((se, k) => {
    const pts = se.bins.filter((b) => b.count > 0);
    const total = Math.max(1, pts.reduce((n, b) => n + b.count, 0));
    const color = colorOf(se.name, k);
    svg.append(s('polyline', {
      points: pts.map((b) => `${px(b.confidence).toFixed(1)},${py(b.accuracy).toFixed(1)}`).join(' '),
      fill: 'none', stroke: color, 'stroke-width': 1.5,
    }));
    for (const b of pts) {
      svg.append(s('circle', {
        cx: px(b.confidence).toFixed(1), cy: py(b.accuracy).toFixed(1),
        r: (2 + 6 * Math.sqrt(b.count / total)).toFixed(1), fill: color, 'fill-opacity': 0.6, class: 'bin',
      }));
    }
    const ly = y0 + size + 48 + k * 14;
    svg.append(s('rect', { x: x0, y: ly - 9, width: 10, height: 10, fill: color }));
    svg.append(s('text', { x: x0 + 14, y: ly, class: 'legend' }, `${se.name} (ECE ${(100 * se.ece).toFixed(1)}%)`));
  });
  return svg;
}

/**
 * Lines over x = 1..n with y in [0, 1] (e.g. train and dev accuracy per epoch).
 * series: [{name, color, points: [[x, y]]}]; xMax: the x axis' end.
 */
export function lines(title, series, xMax, xLabel = 'epoch', yLabel = 'accuracy') {
  const x0 = 50;
  const y0 = 30;
  const w = 300;
  const hgt = 160;
  const width = x0 + w + 130;
  const height = y0 + hgt + 40;
  const svg = s('svg', { class: 'chart lines', width, height, viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': title });
  svg.append(s('text', { x: x0, y: 18, class: 'panel-title' }, title));
  svg.append(s('rect', { x: x0, y: y0, width: w, height: hgt, fill: 'none', stroke: '#888888' }));
  const xm = Math.max(1, xMax);
  const px = (x) => x0 + (x / xm) * w;
  const py = (y) => y0 + (1 - y) * hgt;
  for (const t of [0, 0.5, 1]) {
    svg.append(s('text', { x: x0 - 4, y: py(t) + 3, 'text-anchor': 'end', class: 'tick' }, t.toFixed(1)));
  }
  for (const x of [0, Math.round(xm / 2), xm]) {
    svg.append(s('text', { x: px(x), y: y0 + hgt + 14, 'text-anchor': 'middle', class: 'tick' }, String(x)));
  }
  svg.append(s('text', { x: x0 + w / 2, y: y0 + hgt + 30, 'text-anchor': 'middle', class: 'axis' }, xLabel));
  svg.append(s('text', { x: x0 - 34, y: y0 + hgt / 2, 'text-anchor': 'middle', class: 'axis', transform: `rotate(-90 ${x0 - 34} ${y0 + hgt / 2})` }, yLabel));
  series.forEach((se, k) => {
    svg.append(s('polyline', { points: se.points.map(([x, y]) => `${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(' '), fill: 'none', stroke: se.color, 'stroke-width': 1.5 }));
    for (const [x, y] of se.points) svg.append(s('circle', { cx: px(x), cy: py(y), r: 3, fill: se.color }));
    svg.append(s('rect', { x: x0 + w + 12, y: y0 + k * 16, width: 10, height: 10, fill: se.color }));
    svg.append(s('text', { x: x0 + w + 26, y: y0 + 9 + k * 16, class: 'legend' }, se.name));
  });
  return svg;
}

/**
 * Horizontal grouped bars: one row per label, one bar per series (values ≥ 0, common scale), the value
 * written after each bar. series: [{name, color, values}]; max: the scale's end (default: the largest value).
 */
export function bars(title, labels, series, format = String, max = undefined) {
  const labelW = 8 + 7 * Math.max(6, ...labels.map((l) => l.length));
  const barH = 12;
  const rowH = series.length * (barH + 2) + 10;
  const w = 320;
  const width = labelW + w + 80;
  const height = 40 + labels.length * rowH + 8;
  const end = max ?? Math.max(1e-12, ...series.flatMap((se) => se.values).filter(Number.isFinite));
  const svg = s('svg', { class: 'chart bars', width, height, viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': title });
  svg.append(s('text', { x: 0, y: 14, class: 'panel-title' }, title));
  series.forEach((se, k) => {
    const lx = labelW + k * 150;
    svg.append(s('rect', { x: lx, y: 22, width: 10, height: 10, fill: se.color }));
    svg.append(s('text', { x: lx + 14, y: 31, class: 'legend' }, se.name));
  });
  labels.forEach((label, i) => {
    const y = 40 + i * rowH;
    svg.append(s('text', { x: labelW - 6, y: y + rowH / 2, 'text-anchor': 'end', class: 'axis' }, label));
    series.forEach((se, k) => {
      const v = se.values[i];
      const by = y + 4 + k * (barH + 2);
      const bw = Number.isFinite(v) ? (v / end) * w : 0;
      svg.append(s('rect', { x: labelW, y: by, width: Math.max(0, bw), height: barH, fill: se.color, class: 'bar' }));
      svg.append(s('text', { x: labelW + bw + 4, y: by + barH - 2, class: 'tick' }, Number.isFinite(v) ? format(v) : '—'));
    });
  });
  return svg;
}

/**
 * A retention curve: share of the fine-tuning gain kept (y, clamped to [−0.25, 1.25]) against graft size as a
 * share of the model (x, log scale), one polyline per method, a dashed line at the target, the chosen point
 * ringed. curve: the job's `retention` record ({target, points: [{method, model_fraction, retained}], chosen}).
 */
export function retentionCurve(title, curve, id) {
  const x0 = 50;
  const y0 = 30;
  const w = 300;
  const hgt = 160;
  const width = x0 + w + 130;
  const height = y0 + hgt + 40;
  const svg = s('svg', { class: 'chart lines', id, width, height, viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': title });
  svg.append(s('text', { x: x0, y: 18, class: 'panel-title' }, title));
  svg.append(s('rect', { x: x0, y: y0, width: w, height: hgt, fill: 'none', stroke: '#888888' }));
  const pts = curve.points.filter((p) => p.size > 0 && Number.isFinite(p.retained));
  const logs = pts.map((p) => Math.log10(p.model_fraction));
  const lo = Math.floor(Math.min(-5, ...logs));
  const hi = Math.ceil(Math.max(-1, ...logs));
  const px = (f) => x0 + ((Math.log10(f) - lo) / Math.max(1, hi - lo)) * w;
  const [ymin, ymax] = [-0.25, 1.25];
  const py = (y) => y0 + (1 - (Math.min(ymax, Math.max(ymin, y)) - ymin) / (ymax - ymin)) * hgt;
  for (const t of [0, 0.5, 1]) svg.append(s('text', { x: x0 - 4, y: py(t) + 3, 'text-anchor': 'end', class: 'tick' }, `${t * 100}%`));
  for (let e = lo; e <= hi; e += 1) svg.append(s('text', { x: px(10 ** e), y: y0 + hgt + 14, 'text-anchor': 'middle', class: 'tick' }, `1e${e}`));
  svg.append(s('text', { x: x0 + w / 2, y: y0 + hgt + 30, 'text-anchor': 'middle', class: 'axis' }, 'graft size (share of the model)'));
  svg.append(s('text', { x: x0 - 38, y: y0 + hgt / 2, 'text-anchor': 'middle', class: 'axis', transform: `rotate(-90 ${x0 - 38} ${y0 + hgt / 2})` }, 'gain kept (dev)'));
  svg.append(s('line', { x1: x0, x2: x0 + w, y1: py(curve.target), y2: py(curve.target), stroke: '#888888', 'stroke-dasharray': '4 3', class: 'target' }));
  const methods = [...new Set(pts.map((p) => p.method))];
  methods.forEach((m, k) => {
    const color = m === 'magnitude' ? COLORS['base patch'] : COLORS.graft;
    const mp = pts.filter((p) => p.method === m).sort((a, b) => a.size - b.size);
    svg.append(s('polyline', { points: mp.map((p) => `${px(p.model_fraction).toFixed(1)},${py(p.retained).toFixed(1)}`).join(' '), fill: 'none', stroke: color, 'stroke-width': 1.5 }));
    for (const p of mp) svg.append(s('circle', { cx: px(p.model_fraction), cy: py(p.retained), r: 3, fill: color, class: 'point' }));
    svg.append(s('rect', { x: x0 + w + 12, y: y0 + k * 16, width: 10, height: 10, fill: color }));
    svg.append(s('text', { x: x0 + w + 26, y: y0 + 9 + k * 16, class: 'legend' }, m));
  });
  const c = curve.points[curve.chosen];
  if (c && Number.isFinite(c.retained)) svg.append(s('circle', { cx: px(c.model_fraction), cy: py(c.retained), r: 6, fill: 'none', stroke: '#000000', class: 'chosen' }));
  return svg;
}

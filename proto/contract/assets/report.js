/* flotilla report renderer: results reports as DOM tables and inline SVG charts.
   Plain JavaScript, no dependencies. Every text from the data goes through textContent or
   setAttribute, never through innerHTML. Exposes window.FlotillaReport. */
(function () {
  'use strict';

  // The SVG namespace, taken from the HTML parser (a constant string, no data).
  const SVG_NS = (function () {
    const d = document.createElement('div');
    d.innerHTML = '<svg/>';
    return d.firstChild.namespaceURI;
  })();

  // ---------- DOM helpers ----------

  function build(el, attrs, kids) {
    if (attrs) {
      for (const k of Object.keys(attrs)) {
        const v = attrs[k];
        if (v === null || v === undefined || v === false) continue;
        if (k === 'text') el.textContent = String(v);
        else if (k.slice(0, 2) === 'on' && typeof v === 'function') el.addEventListener(k.slice(2), v);
        else el.setAttribute(k, v === true ? '' : String(v));
      }
    }
    add(el, kids);
    return el;
  }
  function add(el, kids) {
    if (kids === null || kids === undefined || kids === false) return el;
    if (Array.isArray(kids)) { kids.forEach(function (k) { add(el, k); }); return el; }
    el.appendChild(kids instanceof Node ? kids : document.createTextNode(String(kids)));
    return el;
  }
  /** h('div', {class: 'x', text: 'y', onclick: fn}, child, [children], 'text') */
  function h(tag, attrs) { return build(document.createElement(tag), attrs, Array.prototype.slice.call(arguments, 2)); }
  function s(tag, attrs) { return build(document.createElementNS(SVG_NS, tag), attrs, Array.prototype.slice.call(arguments, 2)); }
  function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); return el; }

  const arr = function (v) { return Array.isArray(v) ? v : []; };
  const obj = function (v) { return v && typeof v === 'object' && !Array.isArray(v) ? v : {}; };
  const str = function (v) { return v === null || v === undefined ? '' : String(v); };
  const uniq = function (xs) { return xs.filter(function (x, i) { return xs.indexOf(x) === i; }); };

  // ---------- formatting ----------

  const DASH = '–';
  const isNum = function (v) { return typeof v === 'number' && isFinite(v); };
  function num(v, d) { return isNum(v) ? v.toFixed(d === undefined ? 2 : d) : DASH; }
  function int(v) { return isNum(v) ? Math.round(v).toLocaleString('en-US') : DASH; }
  function signed(v, d) { return isNum(v) ? (v > 0 ? '+' : '') + v.toFixed(d === undefined ? 2 : d) : DASH; }
  function pct(v) { return isNum(v) ? (v > 0 ? '+' : '') + v.toFixed(1) + '%' : DASH; }
  function share(v) { return isNum(v) ? (100 * v).toFixed(0) + '%' : DASH; }
  /** p-values: three significant digits, exponent below 1e-4. */
  function pval(p) {
    if (!isNum(p)) return DASH;
    if (p === 0) return '0';
    return p < 1e-4 ? p.toExponential(2) : p.toPrecision(3);
  }
  function bytes(b) {
    if (!isNum(b)) return DASH;
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
    let x = Math.abs(b), i = 0;
    while (x >= 1024 && i < units.length - 1) { x /= 1024; i++; }
    const t = i === 0 ? x.toFixed(0) : x.toFixed(x >= 100 ? 0 : x >= 10 ? 1 : 2);
    return (b < 0 ? '-' : '') + t + ' ' + units[i];
  }
  function duration(sec) {
    if (!isNum(sec)) return DASH;
    if (sec < 10) return sec.toFixed(1) + ' s';
    if (sec < 60) return Math.round(sec) + ' s';
    const m = Math.floor(sec / 60), hh = Math.floor(m / 60), d = Math.floor(hh / 24);
    if (sec < 3600) return m + ' min ' + Math.round(sec % 60) + ' s';
    if (hh < 24) return hh + ' h ' + (m % 60) + ' min';
    return d + ' d ' + (hh % 24) + ' h';
  }
  function ago(ms) {
    if (!isNum(ms)) return DASH;
    const sec = Math.floor(ms / 1000);
    return sec < 1 ? 'just now' : (sec < 60 ? sec + ' s' : duration(sec)) + ' ago';
  }
  const pad2 = function (n) { return (n < 10 ? '0' : '') + n; };
  function clock(ms) {
    const d = new Date(isNum(ms) ? ms : Date.now());
    return pad2(d.getHours()) + ':' + pad2(d.getMinutes()) + ':' + pad2(d.getSeconds());
  }
  function time(ms) {
    if (!isNum(ms) || ms <= 0) return DASH;
    const d = new Date(ms);
    return d.getFullYear() + '-' + pad2(d.getMonth() + 1) + '-' + pad2(d.getDate()) + ' ' + clock(ms);
  }
  const lang = function (l) { return str(l).toUpperCase() || '?'; };
  const KEY_FIELDS = ['model', 'adapter', 'variant', 'task', 'language'];
  function keyOf(x) { x = obj(x); return KEY_FIELDS.map(function (f) { return str(x[f]); }).join('\u0001'); }
  function keyLabel(x, skip) {
    x = obj(x);
    return KEY_FIELDS.filter(function (f) { return f !== skip; })
      .map(function (f) { return f === 'language' ? lang(x[f]) : str(x[f]) || '?'; }).join(' · ');
  }
  function quoteArg(a) { a = str(a); return /^[\w@%+=:,./-]+$/.test(a) ? a : "'" + a.replace(/'/g, "'\\''") + "'"; }

  // ---------- small building blocks ----------

  function numCell(v, text, cls) {
    return h('td', { class: 'num' + (cls ? ' ' + cls : ''), 'data-sort': isNum(v) ? v : '', text: text === undefined ? num(v) : text });
  }
  function badge(text, cls, title) { return h('span', { class: 'badge ' + (cls || ''), title: title, text: text }); }
  function table(attrs, headers, rows, emptyText) {
    const head = h('tr', null, headers.map(function (c) {
      return typeof c === 'string' ? h('th', { text: c }) : h('th', { title: c.title, class: c.num ? 'num' : null, text: c.text });
    }));
    const body = h('tbody', null, rows);
    if (!rows.length && emptyText) body.appendChild(h('tr', { class: 'empty' }, h('td', { colspan: headers.length, text: emptyText })));
    return h('div', { class: 'table-wrap' }, h('table', attrs, h('thead', null, head), body));
  }
  function section(cls, title, id) { return h('section', { class: 'block ' + cls, id: id }, title ? h('h3', { text: title }) : null); }
  function note(text, cls) { return h('p', { class: 'note ' + (cls || ''), text: text }); }
  function pre(text, cls) { return h('pre', { class: cls || null, text: str(text) }); }
  function details(summary, body, cls, open) {
    return h('details', { class: cls || null, open: !!open }, h('summary', null, summary), body);
  }

  /** Click a header to sort the table by that column (numbers by data-sort). */
  function sortable(wrapOrTable) {
    const t = wrapOrTable.tagName === 'TABLE' ? wrapOrTable : wrapOrTable.querySelector('table');
    if (!t || !t.tHead) return wrapOrTable;
    const ths = Array.prototype.slice.call(t.tHead.rows[0].cells);
    ths.forEach(function (th, col) {
      th.classList.add('sortable');
      th.addEventListener('click', function () {
        const dir = th.getAttribute('data-dir') === 'asc' ? 'desc' : 'asc';
        ths.forEach(function (x) { x.removeAttribute('data-dir'); });
        th.setAttribute('data-dir', dir);
        const body = t.tBodies[0];
        const rows = Array.prototype.slice.call(body.rows).filter(function (r) { return !r.classList.contains('empty'); });
        const val = function (r) {
          const c = r.cells[col];
          if (!c) return '';
          const ds = c.getAttribute('data-sort');
          if (ds !== null) return ds === '' ? -Infinity : parseFloat(ds);
          return c.textContent.toLowerCase();
        };
        rows.sort(function (a, b) {
          const x = val(a), y = val(b);
          const r = x < y ? -1 : x > y ? 1 : 0;
          return dir === 'asc' ? r : -r;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
    return wrapOrTable;
  }

  /** Runs one section builder; a failure shows as a box instead of breaking the page. */
  function safe(label, fn) {
    try { return fn(); } catch (e) {
      if (window.console) console.warn('flotilla report: ' + label + ' could not be drawn', e);
      return h('div', { class: 'render-error', text: label + ' could not be drawn: ' + (e && e.message ? e.message : e) });
    }
  }

  // ---------- scales, colours ----------

  const PALETTE = ['#4e79a7', '#f28e2b', '#59a14f', '#e15759', '#b07aa1', '#76b7b2', '#edc948', '#9c755f',
    '#ff9da7', '#17becf', '#8c564b', '#bab0ac', '#1f3a93', '#a0522d', '#2ca02c', '#d62728'];
  const colour = function (i) { return PALETTE[i % PALETTE.length]; };
  // Per-worker loss lines: no red (held-out points) and no near-black (the aggregate).
  const WORKER_COLOURS = PALETTE.filter(function (c) { return c !== '#e15759' && c !== '#d62728' && c !== '#1f3a93'; });

  function niceStep(span, n) {
    if (!(span > 0)) return 1;
    let step = Math.pow(10, Math.floor(Math.log10(span / n)));
    const err = span / n / step;
    if (err >= 7.5) step *= 10; else if (err >= 3.5) step *= 5; else if (err >= 1.5) step *= 2;
    return step;
  }
  function ticks(lo, hi, n) {
    const step = niceStep(hi - lo, n || 5), out = [];
    for (let t = Math.ceil(lo / step - 1e-9) * step; t <= hi + step * 1e-9; t += step) out.push(+t.toFixed(10));
    return out;
  }
  const tickText = function (t) { return Math.abs(t) >= 1000 ? int(t) : String(+t.toPrecision(6)); };
  const textWidth = function (t, size) { return str(t).length * (size || 12) * 0.58; };
  function scaleOf(report) {
    const sc = obj(report && report.scale);
    const lo = isNum(sc.min) ? sc.min : 0;
    const hi = isNum(sc.max) && sc.max > lo ? sc.max : lo + 10;
    return { min: lo, max: hi };
  }

  /** Legend rows inside an SVG; returns the height used. */
  function svgLegend(svg, items, x0, y0, width) {
    let x = x0, y = y0;
    items.forEach(function (it) {
      const w = 18 + textWidth(it.label, 11) + 14;
      if (x > x0 && x + w > x0 + width) { x = x0; y += 18; }
      const g = s('g', { class: 'legend-item' }, s('title', { text: it.label }));
      if (it.shape === 'line') g.appendChild(s('line', { x1: x, x2: x + 14, y1: y + 5, y2: y + 5, stroke: it.colour, 'stroke-width': it.width || 2, 'stroke-dasharray': it.dash || null }));
      else if (it.shape === 'diamond') g.appendChild(s('rect', { x: x + 3, y: y + 1, width: 8, height: 8, fill: it.colour, transform: 'rotate(45 ' + (x + 7) + ' ' + (y + 5) + ')' }));
      else g.appendChild(s('rect', { x: x, y: y, width: 12, height: 10, rx: 2, fill: it.colour }));
      g.appendChild(s('text', { x: x + 18, y: y + 9.5, class: 'legend-text', text: it.label }));
      svg.appendChild(g);
      x += w;
    });
    return y - y0 + 18;
  }

  // ---------- score bar charts ----------

  /** Colour series (variant x adapter) shared by every chart of a report. */
  function seriesOf(configs) {
    const variants = uniq(configs.map(function (c) { return str(c.variant); }));
    const adapters = uniq(configs.map(function (c) { return str(c.adapter); }));
    const keys = [];
    variants.forEach(function (v) {
      adapters.forEach(function (a) {
        if (configs.some(function (c) { return str(c.variant) === v && str(c.adapter) === a; })) keys.push([v, a]);
      });
    });
    return keys.map(function (k, i) {
      const label = variants.length > 1 && adapters.length > 1 ? k[0] + ' · ' + k[1] : adapters.length > 1 ? k[1] : k[0];
      return { variant: k[0], adapter: k[1], label: label || '(none)', colour: colour(i) };
    });
  }

  /** One bar chart: mean judge score per model (x groups) x series (bars), CI whiskers. */
  function scoreChart(configs, series, scale, opts) {
    opts = opts || {};
    const models = uniq(configs.map(function (c) { return str(c.model); }));
    const used = series.filter(function (se) { return configs.some(function (c) { return str(c.variant) === se.variant && str(c.adapter) === se.adapter; }); });
    const nb = Math.max(used.length, 1);
    const bw = Math.max(8, Math.min(30, Math.floor(220 / nb)));
    const groupW = nb * bw + (nb - 1) * 2 + 22;
    const left = 46, top = 30, plotH = 200;
    const plotW = Math.max(groupW * models.length, 260), slotW = plotW / Math.max(models.length, 1);
    const longest = Math.max.apply(null, models.map(function (m) { return textWidth(m.length > 28 ? m.slice(0, 28) : m, 12); }).concat([0]));
    const rotate = longest > slotW - 8;
    const width = left + plotW + 16;
    const labelH = rotate ? Math.min(longest, 140) * 0.55 + 22 : 26;
    const legendItems = used.map(function (se) { return { label: se.label, colour: se.colour }; });
    const svg = s('svg', { class: 'score-chart', 'data-language': str(opts.language), 'data-task': str(opts.task), role: 'img',
      'aria-label': 'mean judge score, task ' + str(opts.task) + ', ' + lang(opts.language) });
    svg.appendChild(s('text', { x: left, y: 16, class: 'chart-title', text: str(opts.task) + ' · ' + lang(opts.language) }));
    const y = function (v) { return top + plotH - (Math.max(scale.min, Math.min(scale.max, v)) - scale.min) / (scale.max - scale.min) * plotH; };
    ticks(scale.min, scale.max, 5).forEach(function (t) {
      svg.appendChild(s('line', { x1: left, x2: left + plotW, y1: y(t), y2: y(t), class: t === scale.min ? 'axis' : 'grid' }));
      svg.appendChild(s('text', { x: left - 6, y: y(t) + 4, class: 'tick', 'text-anchor': 'end', text: tickText(t) }));
    });
    svg.appendChild(s('line', { x1: left, x2: left, y1: top, y2: top + plotH, class: 'axis' }));
    svg.appendChild(s('text', { class: 'axis-label', transform: 'translate(12,' + (top + plotH / 2) + ') rotate(-90)', 'text-anchor': 'middle',
      text: 'judge score (' + tickText(scale.min) + '–' + tickText(scale.max) + ')' }));
    const barsW = used.length * (bw + 2) - 2;
    models.forEach(function (m, gi) {
      const gx = left + gi * slotW + (slotW - barsW) / 2;
      used.forEach(function (se, si) {
        const c = configs.find(function (c) { return str(c.model) === m && str(c.variant) === se.variant && str(c.adapter) === se.adapter; });
        if (!c) return;
        const x = gx + si * (bw + 2);
        const g = s('g', { class: 'bar', 'data-model': m, 'data-variant': se.variant, 'data-adapter': se.adapter });
        g.appendChild(s('title', { text: m + ' · ' + se.adapter + ' · ' + se.variant + ' — ' + str(opts.task) + ' ' + lang(opts.language) +
          '\nmean ' + num(c.mean) + ' (95% CI ' + num(c.ci_low) + '–' + num(c.ci_high) + '), n = ' + int(c.n) }));
        if (isNum(c.mean)) {
          const y0 = y(scale.min), y1 = y(c.mean);
          g.appendChild(s('rect', { x: x, y: Math.min(y0, y1), width: bw, height: Math.max(Math.abs(y0 - y1), 0.5), fill: se.colour, rx: 1.5 }));
          let labelY = y1;
          if (isNum(c.ci_low) && isNum(c.ci_high)) {
            const a = y(c.ci_low), b = y(c.ci_high), cx = x + bw / 2, cap = Math.min(5, bw / 2 - 1);
            g.appendChild(s('line', { x1: cx, x2: cx, y1: a, y2: b, class: 'whisker' }));
            g.appendChild(s('line', { x1: cx - cap, x2: cx + cap, y1: a, y2: a, class: 'whisker' }));
            g.appendChild(s('line', { x1: cx - cap, x2: cx + cap, y1: b, y2: b, class: 'whisker' }));
            labelY = Math.min(labelY, b);
          }
          if (bw >= 18) g.appendChild(s('text', { x: x + bw / 2, y: labelY - 4, class: 'bar-value', 'text-anchor': 'middle', text: num(c.mean, 1) }));
        } else {
          g.appendChild(s('text', { x: x + bw / 2, y: y(scale.min) - 4, class: 'bar-value muted', 'text-anchor': 'middle', text: 'n/a' }));
        }
        svg.appendChild(g);
      });
      const lx = gx + barsW / 2, ly = top + plotH + 16;
      const label = s('text', { x: lx, y: ly, class: 'group-label', 'text-anchor': rotate ? 'end' : 'middle',
        transform: rotate ? 'rotate(-30 ' + lx + ' ' + (ly - 8) + ')' : null, text: m.length > 28 ? m.slice(0, 27) + '…' : m }, s('title', { text: m }));
      svg.appendChild(label);
    });
    const legendY = top + plotH + labelH + 4;
    const legendH = svgLegend(svg, legendItems, left, legendY, plotW);
    const height = legendY + legendH + 4;
    svg.setAttribute('viewBox', '0 0 ' + width + ' ' + height);
    svg.setAttribute('width', width);
    svg.setAttribute('height', height);
    return svg;
  }

  const LANG_ORDER = function (a, b) {
    const r = function (l) { return l === 'en' ? 0 : l === 'ja' ? 1 : 2; };
    return r(a) - r(b) || (a < b ? -1 : a > b ? 1 : 0);
  };

  /** Bar charts grouped by task, one chart per language side by side. */
  function scoreCharts(report) {
    const configs = arr(report && report.configurations).filter(function (c) { return c && typeof c === 'object'; });
    const sec = section('score-charts', 'Mean judge score (95% CI)');
    if (!configs.length) return null;
    const series = seriesOf(configs), scale = scaleOf(report);
    uniq(configs.map(function (c) { return str(c.task); })).forEach(function (task) {
      const inTask = configs.filter(function (c) { return str(c.task) === task; });
      const row = h('div', { class: 'chart-row', 'data-task': task }, h('h4', { text: 'task: ' + (task || '(none)') }));
      const charts = h('div', { class: 'charts' });
      uniq(inTask.map(function (c) { return str(c.language); })).sort(LANG_ORDER).forEach(function (l) {
        charts.appendChild(h('figure', { class: 'chart' }, scoreChart(inTask.filter(function (c) { return str(c.language) === l; }), series, scale, { task: task, language: l })));
      });
      row.appendChild(charts);
      sec.appendChild(row);
    });
    return sec;
  }

  // ---------- loss curves ----------

  /** Loss vs step: aggregate loss, per-worker losses (diloco), held-out points. */
  function lossChart(run) {
    run = obj(run);
    const pts = arr(run.loss).filter(function (p) { return p && isNum(p.step); }).sort(function (a, b) { return a.step - b.step; });
    const workers = [];
    pts.forEach(function (p) { Object.keys(obj(p.workers)).forEach(function (w) { if (workers.indexOf(w) < 0) workers.push(w); }); });
    workers.sort();
    const lines = [];
    workers.forEach(function (w, i) {
      lines.push({ label: /worker/i.test(w) ? w : 'worker ' + w, colour: WORKER_COLOURS[i % WORKER_COLOURS.length], width: 1.5, dash: '4 3', cls: 'worker-line', data: w,
        points: pts.filter(function (p) { return isNum(obj(p.workers)[w]); }).map(function (p) { return [p.step, p.workers[w], p]; }) });
    });
    lines.push({ label: workers.length ? 'loss (aggregate)' : 'training loss', colour: '#222', width: 2.2, cls: 'loss-line',
      points: pts.filter(function (p) { return isNum(p.loss); }).map(function (p) { return [p.step, p.loss, p]; }) });
    const held = pts.filter(function (p) { return isNum(p.heldout_loss); }).map(function (p) { return [p.step, p.heldout_loss, p]; });
    if (isNum(run.heldout_loss_before)) held.unshift([0, run.heldout_loss_before, null]);
    const all = lines.reduce(function (acc, l) { return acc.concat(l.points); }, []).concat(held);
    const width = 640, left = 56, right = 16, top = 28, plotH = 200, plotW = width - left - right;
    const svg = s('svg', { class: 'loss-chart', 'data-adapter': str(run.adapter), 'data-model': str(run.model), 'data-mode': str(run.mode),
      role: 'img', 'aria-label': 'training loss of ' + str(run.adapter) });
    svg.appendChild(s('text', { x: left, y: 16, class: 'chart-title', text: 'loss · ' + str(run.adapter) + ' (' + str(run.model) + ', ' + str(run.mode) + ')' }));
    if (!all.length) {
      svg.appendChild(s('text', { x: width / 2, y: top + plotH / 2, 'text-anchor': 'middle', class: 'muted', text: 'no loss recorded' }));
      svg.setAttribute('viewBox', '0 0 ' + width + ' ' + (top + plotH));
      svg.setAttribute('width', width); svg.setAttribute('height', top + plotH);
      return svg;
    }
    let xlo = Math.min.apply(null, all.map(function (p) { return p[0]; })), xhi = Math.max.apply(null, all.map(function (p) { return p[0]; }));
    if (xhi === xlo) { xlo -= 1; xhi += 1; }
    let ylo = Math.min.apply(null, all.map(function (p) { return p[1]; })), yhi = Math.max.apply(null, all.map(function (p) { return p[1]; }));
    if (yhi - ylo < 1e-9) { ylo -= 0.5; yhi += 0.5; }
    const ystep = niceStep(yhi - ylo, 5);
    ylo = Math.floor(ylo / ystep) * ystep; yhi = Math.ceil(yhi / ystep) * ystep;
    const X = function (v) { return left + (v - xlo) / (xhi - xlo) * plotW; };
    const Y = function (v) { return top + plotH - (v - ylo) / (yhi - ylo) * plotH; };
    ticks(ylo, yhi, 5).forEach(function (t) {
      svg.appendChild(s('line', { x1: left, x2: left + plotW, y1: Y(t), y2: Y(t), class: 'grid' }));
      svg.appendChild(s('text', { x: left - 6, y: Y(t) + 4, class: 'tick', 'text-anchor': 'end', text: tickText(t) }));
    });
    ticks(xlo, xhi, 8).filter(function (t) { return Math.abs(t - Math.round(t)) < 1e-9; }).forEach(function (t) {
      svg.appendChild(s('line', { x1: X(t), x2: X(t), y1: top + plotH, y2: top + plotH + 4, class: 'axis' }));
      svg.appendChild(s('text', { x: X(t), y: top + plotH + 16, class: 'tick', 'text-anchor': 'middle', text: tickText(t) }));
    });
    svg.appendChild(s('line', { x1: left, x2: left + plotW, y1: top + plotH, y2: top + plotH, class: 'axis' }));
    svg.appendChild(s('line', { x1: left, x2: left, y1: top, y2: top + plotH, class: 'axis' }));
    svg.appendChild(s('text', { x: left + plotW / 2, y: top + plotH + 32, class: 'axis-label', 'text-anchor': 'middle', text: 'step' }));
    svg.appendChild(s('text', { class: 'axis-label', transform: 'translate(14,' + (top + plotH / 2) + ') rotate(-90)', 'text-anchor': 'middle', text: 'loss' }));
    const tip = function (label, p) {
      const q = p[2];
      return label + ': ' + num(p[1], 4) + ' at step ' + p[0] + (q && isNum(q.round) ? ' (round ' + q.round + ')' : '');
    };
    lines.forEach(function (l) {
      if (!l.points.length) return;
      const g = s('g', { class: l.cls, 'data-worker': l.data || null }, s('title', { text: l.label }));
      if (l.points.length > 1) {
        g.appendChild(s('polyline', { fill: 'none', stroke: l.colour, 'stroke-width': l.width, 'stroke-dasharray': l.dash || null,
          'stroke-linejoin': 'round', points: l.points.map(function (p) { return X(p[0]).toFixed(1) + ',' + Y(p[1]).toFixed(1); }).join(' ') }));
      }
      if (l.points.length <= 60) {
        l.points.forEach(function (p) {
          g.appendChild(s('circle', { cx: X(p[0]), cy: Y(p[1]), r: l.cls === 'loss-line' ? 3 : 2.2, fill: l.colour }, s('title', { text: tip(l.label, p) })));
        });
      }
      svg.appendChild(g);
    });
    if (held.length) {
      const g = s('g', { class: 'heldout' });
      held.forEach(function (p) {
        g.appendChild(s('rect', { x: X(p[0]) - 4, y: Y(p[1]) - 4, width: 8, height: 8, fill: '#e15759', stroke: '#fff', 'stroke-width': 1, transform: 'rotate(45 ' + X(p[0]) + ' ' + Y(p[1]) + ')' },
          s('title', { text: tip(p[2] ? 'held-out loss' : 'held-out loss before training', p) })));
      });
      svg.appendChild(g);
    }
    const legend = lines.slice(-1).concat(lines.slice(0, -1)).filter(function (l) { return l.points.length; }).map(function (l) {
      return { label: l.label, colour: l.colour, shape: 'line', dash: l.dash, width: l.width };
    });
    if (held.length) legend.push({ label: 'held-out loss', colour: '#e15759', shape: 'diamond' });
    const lh = svgLegend(svg, legend, left, top + plotH + 42, plotW);
    const height = top + plotH + 42 + lh;
    svg.setAttribute('viewBox', '0 0 ' + width + ' ' + height);
    svg.setAttribute('width', width); svg.setAttribute('height', height);
    return svg;
  }

  function trainingSection(report) {
    const runs = arr(report && report.training);
    const sec = section('training', 'Training');
    if (!runs.length) { sec.appendChild(note('No training in this sweep.')); return sec; }
    runs.forEach(function (t) {
      t = obj(t);
      const before = t.heldout_loss_before, after = t.heldout_loss;
      const facts = [
        ['mode', str(t.mode)], ['workers', arr(t.workers).join(', ') || DASH], ['steps', int(t.steps)], ['rounds', int(t.rounds)],
        ['tokens', int(t.tokens)], ['sent / received', bytes(t.bytes_sent) + ' / ' + bytes(t.bytes_received)], ['wall time', duration(t.wall_s)],
        ['held-out loss', num(before, 4) + ' → ' + num(after, 4) + (isNum(before) && isNum(after) ? ' (' + signed(after - before, 4) + ')' : '')]
      ];
      const cps = arr(t.checkpoints);
      sec.appendChild(h('div', { class: 'training-run', 'data-adapter': str(t.adapter) },
        h('h4', { text: str(t.adapter) + ' on ' + str(t.model) }),
        h('div', { class: 'training-body' },
          h('dl', { class: 'facts' }, facts.map(function (f) { return [h('dt', { text: f[0] }), h('dd', { text: f[1] })]; })),
          h('figure', { class: 'chart' }, lossChart(t))),
        cps.length ? details('checkpoints (' + cps.length + ')', table({ class: 'checkpoints' }, ['round', 'step', 'loss', 'held-out', 'path', 'sha256'],
          cps.map(function (c) {
            c = obj(c);
            return h('tr', null, numCell(c.round, int(c.round)), numCell(c.step, int(c.step)), numCell(c.loss, num(c.loss, 4)),
              numCell(c.heldout_loss, num(c.heldout_loss, 4)), h('td', { class: 'mono', text: str(c.path) }),
              h('td', { class: 'mono', title: str(c.sha256), text: str(c.sha256).slice(0, 12) }));
          }))) : null));
    });
    return sec;
  }

  // ---------- tables ----------

  function ciBar(lo, mean, hi, scale) {
    if (!isNum(mean)) return null;
    const W = 70, X = function (v) { return 2 + (Math.max(scale.min, Math.min(scale.max, v)) - scale.min) / (scale.max - scale.min) * (W - 4); };
    const svg = s('svg', { class: 'ci-bar', width: W, height: 10, viewBox: '0 0 ' + W + ' 10', 'aria-hidden': 'true' },
      s('line', { x1: 2, x2: W - 2, y1: 5, y2: 5, class: 'ci-track' }));
    if (isNum(lo) && isNum(hi)) svg.appendChild(s('line', { x1: X(lo), x2: X(hi), y1: 5, y2: 5, class: 'ci-range' }));
    svg.appendChild(s('circle', { cx: X(mean), cy: 5, r: 2.5, class: 'ci-mean' }));
    return svg;
  }

  function scoreTable(report, opts) {
    opts = opts || {};
    const scale = scaleOf(report);
    const rows = arr(report && report.configurations).map(function (c) {
      c = obj(c);
      const bad = (c.errors || 0) + (c.unparsed || 0) > 0;
      return h('tr', { class: 'config-row', 'data-model': str(c.model), 'data-adapter': str(c.adapter), 'data-variant': str(c.variant),
        'data-task': str(c.task), 'data-language': str(c.language) },
        h('td', { text: str(c.model) }), h('td', { text: str(c.adapter) }), h('td', { text: str(c.variant) }),
        h('td', { text: str(c.task) }), h('td', { text: lang(c.language) }),
        numCell(c.n, int(c.n)), numCell(c.mean, num(c.mean), 'strong'),
        h('td', { class: 'num ci', 'data-sort': isNum(c.ci_low) ? c.ci_low : '' },
          h('span', { text: isNum(c.ci_low) ? num(c.ci_low) + '–' + num(c.ci_high) : DASH }), ' ', ciBar(c.ci_low, c.mean, c.ci_high, scale)),
        numCell(c.mean_geval), numCell(c.mean_token_f1), numCell(c.mean_recall_at_k), numCell(c.mean_context_recall),
        h('td', { class: 'num' + (bad ? ' bad' : ''), 'data-sort': (c.errors || 0) + (c.unparsed || 0),
          title: 'cases ' + int(c.cases) + ', answers ' + int(c.answers) + ', errors ' + int(c.errors) + ', invalid ratings ' + int(c.invalid_ratings) +
            ', parse failures ' + int(c.parse_failures) + ', unparsed ' + int(c.unparsed),
          text: int(c.errors) + ' / ' + int(c.unparsed) }));
    });
    const sec = section('scores', 'Scores (judge scale ' + tickText(scale.min) + '–' + tickText(scale.max) + ')');
    sec.appendChild(sortable(table({ id: opts.id || 'score-table', class: 'score-table' },
      ['model', 'adapter', 'variant', 'task', 'lang', { text: 'n', num: 1 }, { text: 'mean', num: 1 }, { text: '95% CI', num: 1 },
        { text: 'G-Eval', num: 1, title: 'probability-weighted judge score' }, { text: 'token F1', num: 1 }, { text: 'recall@k', num: 1 },
        { text: 'ctx recall', num: 1, title: 'context recall' }, { text: 'errors / unparsed', num: 1 }],
      rows, 'No judged configurations.')));
    return sec;
  }

  function significance(lo, hi) { return isNum(lo) && isNum(hi) && (lo > 0 || hi < 0) ? (lo > 0 ? 'up' : 'down') : ''; }

  function comparisonsTable(report, opts) {
    opts = opts || {};
    const rows = arr(report && report.comparisons).map(function (c) {
      c = obj(c);
      const a = obj(c.a), b = obj(c.b), axis = str(c.axis), sig = significance(c.ci_low, c.ci_high);
      return h('tr', { class: 'comparison-row' + (sig ? ' sig-' + sig : ''), 'data-metric': str(c.metric), 'data-axis': axis },
        h('td', { text: str(c.metric) }), h('td', { text: axis }), h('td', { class: 'muted', text: keyLabel(a, axis) }),
        h('td', { text: axis === 'language' ? lang(a[axis]) : str(a[axis]) || keyLabel(a) }),
        h('td', { text: axis === 'language' ? lang(b[axis]) : str(b[axis]) || keyLabel(b) }),
        numCell(c.n, int(c.n)), numCell(c.mean_a), numCell(c.mean_b), numCell(c.delta, signed(c.delta), 'strong delta'),
        numCell(c.percent_change, pct(c.percent_change)),
        h('td', { class: 'num', 'data-sort': isNum(c.ci_low) ? c.ci_low : '', text: isNum(c.ci_low) ? signed(c.ci_low) + ' … ' + signed(c.ci_high) : DASH }),
        numCell(c.p_value, pval(c.p_value)), numCell(c.p_holm, pval(c.p_holm), isNum(c.p_holm) && c.p_holm < 0.05 ? 'strong' : ''),
        h('td', null, c.underpowered ? badge('underpowered', 'warn', 'too few paired cases for the test to reach p < 0.05') : null));
    });
    const sec = section('comparisons', 'Paired comparisons (b − a)');
    sec.appendChild(sortable(table({ id: opts.id || 'comparisons', class: 'comparisons' },
      ['metric', 'axis', 'fixed', 'a', 'b', { text: 'n', num: 1 }, { text: 'mean a', num: 1 }, { text: 'mean b', num: 1 },
        { text: 'delta', num: 1 }, { text: 'change', num: 1 }, { text: '95% CI', num: 1 }, { text: 'p', num: 1, title: 'paired permutation test' },
        { text: 'Holm p', num: 1, title: 'Holm-adjusted over all comparisons' }, ''],
      rows, 'No paired comparisons.')));
    return sec;
  }

  function pairwiseSection(report) {
    const rows = arr(report && report.pairwise).map(function (p) {
      p = obj(p);
      return h('tr', { class: 'pairwise-row' }, h('td', { text: str(p.judge) }), h('td', { text: str(p.model) }), h('td', { text: str(p.adapter) }),
        h('td', { text: str(p.a) }), h('td', { text: str(p.b) }), numCell(p.n, int(p.n)), numCell(p.wins_a, int(p.wins_a)), numCell(p.wins_b, int(p.wins_b)),
        numCell(p.ties, int(p.ties)), numCell(p.inconsistent, int(p.inconsistent)), numCell(p.errors, int(p.errors)),
        numCell(p.win_rate_b, share(p.win_rate_b), 'strong'), numCell(p.net_b, signed(p.net_b)),
        h('td', { class: 'num', text: isNum(p.ci_low) ? signed(p.ci_low) + ' … ' + signed(p.ci_high) : DASH }), numCell(p.p_value, pval(p.p_value)));
    });
    if (!rows.length) return null;
    const sec = section('pairwise', 'Pairwise preferences (b vs a)');
    sec.appendChild(table({ class: 'pairwise-table' }, ['judge', 'model', 'adapter', 'a', 'b', 'n', 'a wins', 'b wins', 'ties', 'inconsistent', 'errors',
      'b win rate', 'net b', '95% CI', 'p'], rows));
    return sec;
  }

  function histogram(hist, scale) {
    hist = arr(hist);
    const bw = 11, H = 36, max = Math.max.apply(null, hist.filter(isNum).concat([1]));
    const svg = s('svg', { class: 'judge-histogram', width: hist.length * bw + 2, height: H + 12, viewBox: '0 0 ' + (hist.length * bw + 2) + ' ' + (H + 12) });
    hist.forEach(function (c, i) {
      const hgt = isNum(c) && c > 0 ? Math.max(1.5, c / max * H) : 0;
      svg.appendChild(s('g', { class: 'hist-bin' }, s('title', { text: 'rating ' + (scale.min + i) + ': ' + int(c) }),
        s('rect', { x: 1 + i * bw, y: 0, width: bw - 1, height: H, fill: 'transparent' }),
        s('rect', { x: 1 + i * bw, y: H - hgt, width: bw - 2, height: hgt, class: 'hist-bar' })));
    });
    svg.appendChild(s('line', { x1: 0, x2: hist.length * bw + 2, y1: H + 0.5, y2: H + 0.5, class: 'axis' }));
    if (hist.length) {
      svg.appendChild(s('text', { x: 1, y: H + 11, class: 'tick small', text: String(scale.min) }));
      svg.appendChild(s('text', { x: hist.length * bw + 1, y: H + 11, class: 'tick small', 'text-anchor': 'end', text: String(scale.min + hist.length - 1) }));
    }
    return svg;
  }

  function judgesSection(report) {
    const scale = scaleOf(report);
    const rows = arr(report && report.judges).map(function (j) {
      j = obj(j);
      const itself = arr(j.judges_itself);
      return h('tr', { class: 'judge-row', 'data-judge': str(j.judge) },
        h('td', { class: 'strong', text: str(j.judge) }), numCell(j.ratings, int(j.ratings)),
        numCell(j.invalid, int(j.invalid), j.invalid > 0 ? 'bad' : ''), numCell(j.mean), numCell(j.std),
        numCell(j.top_share, share(j.top_share), isNum(j.top_share) && j.top_share > 0.8 ? 'bad' : ''),
        h('td', null, histogram(j.histogram, scale)),
        h('td', null, arr(j.agreement).map(function (a) {
          a = obj(a);
          return h('div', { class: 'agreement' }, str(a.metric) + ': ρ = ' + num(a.spearman) + ' (n = ' + int(a.n) + ')');
        })),
        h('td', null, itself.length ? badge('grades itself: ' + itself.join(', '), 'warn') : null,
          arr(j.warnings).map(function (w) { return h('div', { class: 'small warn-text', text: str(w) }); })));
    });
    if (!rows.length) return null;
    const sec = section('judges', 'Judge checks');
    sec.appendChild(table({ class: 'judge-table' }, ['judge', { text: 'ratings', num: 1 }, { text: 'invalid', num: 1 }, { text: 'mean', num: 1 },
      { text: 'std', num: 1 }, { text: 'top share', num: 1, title: 'share of the most frequent rating' }, 'histogram',
      { text: 'agreement', title: 'Spearman correlation with reference metrics' }, 'notes'], rows));
    return sec;
  }

  function timingsSection(report) {
    const rows = arr(report && report.timings).map(function (t) {
      t = obj(t);
      return h('tr', { class: 'timing-row' }, KEY_FIELDS.map(function (f) { return h('td', { text: f === 'language' ? lang(t[f]) : str(t[f]) }); }),
        numCell(t.mean_latency_s, isNum(t.mean_latency_s) ? t.mean_latency_s.toFixed(2) + ' s' : DASH),
        numCell(t.mean_prompt_tokens, num(t.mean_prompt_tokens, 1)), numCell(t.mean_completion_tokens, num(t.mean_completion_tokens, 1)),
        numCell(t.mean_retry_prompt_tokens, num(t.mean_retry_prompt_tokens, 1)), numCell(t.mean_retry_completion_tokens, num(t.mean_retry_completion_tokens, 1)));
    });
    if (!rows.length) return null;
    const sec = section('timings', 'Timings (means per answer)');
    sec.appendChild(sortable(table({ class: 'timings-table' }, ['model', 'adapter', 'variant', 'task', 'lang', { text: 'latency', num: 1 },
      { text: 'prompt tok', num: 1 }, { text: 'completion tok', num: 1 }, { text: 'retry prompt tok', num: 1 }, { text: 'retry completion tok', num: 1 }], rows)));
    return sec;
  }

  function warningsSection(report) {
    const ws = arr(report && report.warnings);
    if (!ws.length) return null;
    return h('section', { class: 'block warnings', role: 'note' }, h('h3', { text: 'Warnings (' + ws.length + ')' }),
      h('ul', null, ws.map(function (w) { return h('li', { class: 'warning', text: str(w) }); })));
  }

  function provenanceSection(report) {
    const p = report && report.provenance;
    const sec = section('provenance', 'Run settings');
    if (!p || typeof p !== 'object') {
      const bits = [report && report.flotilla_version ? 'flotilla ' + str(report.flotilla_version) : null, report && isNum(report.seed) ? 'seed ' + report.seed : null].filter(Boolean);
      sec.appendChild(note('No provenance recorded' + (bits.length ? ' (' + bits.join(', ') + ')' : '') + '.'));
      return sec;
    }
    const facts = [
      ['flotilla', str(p.flotilla_version || report.flotilla_version)], ['commit', str(p.flotilla_commit) || DASH], ['command', str(p.command) || DASH],
      ['argv', arr(p.argv).length ? arr(p.argv).map(quoteArg).join(' ') : null], ['cwd', str(p.cwd) || null],
      ['sweep file', str(p.sweep_path) || null], ['seed', str(isNum(p.seed) ? p.seed : report.seed)],
      ['judges', arr(p.judges).join(', ') || null],
      ['started', str(p.started_at) || null], ['finished', str(p.finished_at) || null]
    ].filter(function (f) { return f[1]; });
    sec.appendChild(h('dl', { class: 'facts provenance-facts' }, facts.map(function (f) {
      return [h('dt', { text: f[0] }), h('dd', { class: /commit|argv|cwd|sweep file/.test(f[0]) ? 'mono' : null, text: f[1] })];
    })));
    if (p.settings !== undefined && p.settings !== null) sec.appendChild(details('settings', pre(JSON.stringify(p.settings, null, 2), 'json'), 'settings'));
    if (p.sweep_yaml) sec.appendChild(details('sweep file contents', pre(p.sweep_yaml, 'yaml'), 'sweep-yaml'));
    const machines = arr(p.machines);
    if (machines.length) {
      sec.appendChild(details('machines (' + machines.length + ')', table({ class: 'machines' }, ['worker', 'hostname', 'os / arch', 'cores', 'device', 'flotilla'],
        machines.map(function (m) {
          m = obj(m);
          return h('tr', null, h('td', { class: 'mono', text: str(m.worker) }), h('td', { text: str(m.hostname) }), h('td', { text: str(m.os) + ' / ' + str(m.arch) }),
            numCell(m.cores, int(m.cores)), h('td', { text: str(m.device) }), h('td', { text: str(m.flotilla_version) }));
        })), 'machines'));
    }
    const files = arr(p.files);
    if (files.length) {
      sec.appendChild(details('files (' + files.length + ')', table({ class: 'files' }, ['role', 'name', 'size', 'sha256'], files.map(function (f) {
        f = obj(f);
        return h('tr', null, h('td', { text: str(f.role) }), h('td', { class: 'mono', title: str(f.path), text: str(f.name) }), numCell(f.bytes, bytes(f.bytes)),
          h('td', { class: 'mono', title: str(f.sha256), text: f.error ? 'error: ' + str(f.error) : str(f.sha256).slice(0, 16) }));
      })), 'files'));
    }
    const shards = arr(p.shards);
    if (shards.length) {
      sec.appendChild(details('shards (' + shards.length + ')', table({ class: 'shards' }, ['shard', 'kind', 'attempt', 'worker', 'started', 'ended'], shards.map(function (x) {
        x = obj(x);
        return h('tr', null, h('td', { class: 'mono', text: str(x.shard) }), h('td', { text: str(x.kind) }), numCell(x.attempt, int(x.attempt)),
          h('td', { class: 'mono', text: str(x.worker) }), h('td', { text: str(x.started_at) }), h('td', { text: str(x.ended_at) }));
      })), 'shards'));
    }
    return sec;
  }

  // ---------- cases ----------

  function scoreClass(score, scale) {
    if (!isNum(score)) return 'none';
    const f = (score - scale.min) / (scale.max - scale.min);
    return f >= 2 / 3 ? 'high' : f >= 1 / 3 ? 'mid' : 'low';
  }
  function field(label, value, cls) {
    if (value === null || value === undefined || value === '') return null;
    return h('div', { class: 'field ' + (cls || '') }, h('div', { class: 'field-label', text: label }),
      value instanceof Node ? value : h('div', { class: 'field-value', text: str(value) }));
  }
  function metricsLine(m) {
    m = obj(m);
    const parts = [];
    Object.keys(m).sort().forEach(function (k) {
      const v = m[k];
      if (v === null || v === undefined) return;
      if (Array.isArray(v)) { if (v.length) parts.push(k + ': ' + v.map(str).join(', ')); return; }
      parts.push(k + ': ' + (typeof v === 'number' ? num(v) : typeof v === 'object' ? JSON.stringify(v) : str(v)));
    });
    return parts.join(' · ');
  }

  function caseDetails(c, scale) {
    c = obj(c);
    const q = str(c.query);
    const summary = [badge(isNum(c.score) ? num(c.score, 1) : 'n/a', 'score ' + scoreClass(c.score, scale), 'judge score'),
      h('span', { class: 'case-id', text: str(c.case_id) + (isNum(c.sample) && c.sample > 0 ? ' #' + c.sample : '') }),
      h('span', { class: 'case-query', text: q.length > 140 ? q.slice(0, 139) + '…' : q }),
      c.error ? badge('error', 'bad') : null, c.parse_error ? badge('unparsed', 'warn') : null];
    const hits = arr(c.hits);
    const body = h('div', { class: 'case-body' },
      field('query', q),
      field('answer', h('pre', { class: 'answer', text: str(c.answer !== undefined && c.answer !== null ? c.answer : c.raw_answer) })),
      c.raw_answer && c.raw_answer !== c.answer ? details('raw answer', pre(c.raw_answer), 'raw') : null,
      field('reference', c.reference_answer),
      field('score', isNum(c.score) ? num(c.score) + ' / ' + tickText(scale.max) : 'not scored'),
      field('metrics', metricsLine(c.metrics)),
      field('recall@k', isNum(c.recall_at_k) ? num(c.recall_at_k) : null),
      field('error', c.error, 'bad'), field('parse error', c.parse_error, 'warn'),
      field('truncation', c.truncation && typeof c.truncation === 'object' ? JSON.stringify(c.truncation) : c.truncation),
      arr(c.verdicts).map(function (v) {
        v = obj(v);
        return h('div', { class: 'verdict' }, h('div', { class: 'verdict-head' }, h('strong', { text: str(v.judge) }),
          ' rating ' + (isNum(v.rating) ? num(v.rating, 1) : DASH) + (isNum(v.geval) ? ' · G-Eval ' + num(v.geval) : '')),
          v.explanation ? h('div', { class: 'explanation', text: str(v.explanation) }) : null,
          v.error ? h('div', { class: 'bad', text: 'error: ' + str(v.error) }) : null,
          v.raw ? details('raw verdict', pre(v.raw), 'raw') : null);
      }),
      hits.length ? details('retrieved (' + hits.length + ')', h('ol', { class: 'hits' }, hits.map(function (x) {
        x = obj(x);
        return h('li', null, h('div', { class: 'small muted', text: str(x.document) + ' #' + str(x.chunk) + ' · score ' + num(x.score, 3) }), pre(x.text));
      })), 'hits') : null,
      c.prompt ? details('prompt', pre(c.prompt), 'prompt') : null);
    return h('details', { class: 'case', 'data-case-id': str(c.case_id) }, h('summary', null, summary), body);
  }

  function casesSection(report, cases) {
    cases = arr(cases).filter(function (c) { return c && typeof c === 'object'; });
    const sec = section('cases', 'Answers (' + cases.length + ' cases)');
    if (!cases.length) { sec.appendChild(note('No cases recorded.')); return sec; }
    const scale = scaleOf(report), order = arr(report && report.configurations).map(keyOf), groups = {}, keys = [];
    cases.forEach(function (c) { const k = keyOf(c); if (!groups[k]) { groups[k] = []; keys.push(k); } groups[k].push(c); });
    keys.sort(function (a, b) {
      const ia = order.indexOf(a), ib = order.indexOf(b);
      return (ia < 0 ? 1e9 : ia) - (ib < 0 ? 1e9 : ib);
    });
    const select = h('select', { class: 'case-filter', 'aria-label': 'configuration' }, h('option', { value: '', text: 'all configurations' }),
      keys.map(function (k, i) { return h('option', { value: String(i), text: keyLabel(groups[k][0]) + ' (' + groups[k].length + ')' }); }));
    const groupEls = keys.map(function (k, i) {
      const list = groups[k], scored = list.filter(function (c) { return isNum(c.score); });
      const mean = scored.length ? scored.reduce(function (a, c) { return a + c.score; }, 0) / scored.length : null;
      return h('div', { class: 'case-group', 'data-group': String(i) },
        h('h4', null, keyLabel(list[0]), h('span', { class: 'muted small', text: '  ' + list.length + ' cases · mean ' + num(mean) })),
        list.map(function (c) { return caseDetails(c, scale); }));
    });
    select.addEventListener('change', function () {
      groupEls.forEach(function (g) { g.hidden = select.value !== '' && g.getAttribute('data-group') !== select.value; });
    });
    sec.appendChild(h('div', { class: 'case-tools' }, h('label', null, 'show ', select)));
    groupEls.forEach(function (g) { sec.appendChild(g); });
    return sec;
  }

  // ---------- whole reports ----------

  /** One run: runEntry = {name, dir, report, cases}. options: {index, cases, provenance, judges, timings, heading}. */
  function renderReportPanel(container, runEntry, options) {
    const o = Object.assign({ index: 0, cases: true, provenance: true, judges: true, timings: true, heading: false }, options || {});
    const run = obj(runEntry), sfx = o.index ? '-run' + o.index : '';
    // A bare results.json object is accepted as well as a run entry.
    const report = obj(run.report || (run.configurations || run.training || run.flotilla_version ? run : null));
    const panel = h('div', { class: 'report-panel' });
    if (o.heading) {
      panel.appendChild(h('h2', { class: 'run-name' }, str(run.name) || 'run ' + (o.index + 1),
        run.dir ? h('span', { class: 'muted small mono', text: '  ' + str(run.dir) }) : null));
    }
    const parts = [
      o.provenance ? ['run settings', function () { return provenanceSection(report); }] : null,
      ['warnings', function () { return warningsSection(report); }],
      ['score table', function () { return scoreTable(report, { id: 'score-table' + sfx }); }],
      ['score charts', function () { return scoreCharts(report); }],
      ['comparisons', function () { return comparisonsTable(report, { id: 'comparisons' + sfx }); }],
      ['pairwise', function () { return pairwiseSection(report); }],
      o.judges ? ['judge checks', function () { return judgesSection(report); }] : null,
      o.timings ? ['timings', function () { return timingsSection(report); }] : null,
      ['training', function () { return arr(report.training).length ? trainingSection(report) : null; }],
      o.cases ? ['answers', function () { return casesSection(report, run.cases); }] : null
    ];
    parts.forEach(function (p) { if (p) add(panel, safe(p[0], p[1])); });
    clear(container).appendChild(panel);
    return panel;
  }

  function runComparison(data) {
    const runs = arr(data.runs), cmp = obj(data.comparison);
    const names = runs.map(function (r, i) { return str(obj(r).name) || 'run ' + (i + 1); });
    const runName = function (i) { return isNum(i) && names[i] !== undefined ? names[i] : str(i); };
    const sec = h('section', { id: 'run-comparison', class: 'block' }, h('h2', { text: 'Comparison of ' + runs.length + ' runs' }));
    if (!data.comparison) { sec.appendChild(note('No comparison computed.')); return sec; }
    const changes = arr(cmp.changes);
    sec.appendChild(h('h3', { text: 'What changed' }));
    sec.appendChild(table({ class: 'changes', id: 'run-changes' }, ['setting'].concat(names), changes.map(function (c) {
      c = obj(c);
      const vals = arr(c.values);
      return h('tr', { class: 'change-row' }, h('td', { class: 'strong', text: str(c.what) }), names.map(function (_, i) {
        const v = vals[i];
        return h('td', { class: 'mono small', text: v === null || v === undefined ? DASH : typeof v === 'object' ? JSON.stringify(v) : str(v) });
      }));
    }), 'Nothing changed between the runs.'));
    sec.appendChild(h('h3', { text: 'Paired differences between runs (b − a)' }));
    sec.appendChild(sortable(table({ class: 'comparisons run-comparison-rows', id: 'run-comparison-rows' },
      ['model', 'adapter', 'variant', 'task', 'lang', 'metric', 'a', 'b', { text: 'n', num: 1 }, { text: 'mean a', num: 1 }, { text: 'mean b', num: 1 },
        { text: 'delta', num: 1 }, { text: '95% CI', num: 1 }, { text: 'p', num: 1 }, { text: 'Holm p', num: 1 }],
      arr(cmp.rows).map(function (r) {
        r = obj(r);
        const k = obj(r.key), sig = significance(r.ci_low, r.ci_high);
        return h('tr', { class: 'run-comparison-row' + (sig ? ' sig-' + sig : '') }, KEY_FIELDS.map(function (f) { return h('td', { text: f === 'language' ? lang(k[f]) : str(k[f]) }); }),
          h('td', { text: str(r.metric) }), h('td', { text: runName(r.a) }), h('td', { text: runName(r.b) }),
          numCell(r.n, int(r.n)), numCell(r.mean_a), numCell(r.mean_b), numCell(r.delta, signed(r.delta), 'strong delta'),
          h('td', { class: 'num', 'data-sort': isNum(r.ci_low) ? r.ci_low : '', text: isNum(r.ci_low) ? signed(r.ci_low) + ' … ' + signed(r.ci_high) : DASH }),
          numCell(r.p_value, pval(r.p_value)), numCell(r.p_holm, pval(r.p_holm)));
      }), 'No configuration is in more than one run.')));
    const un = arr(cmp.unmatched);
    if (un.length) sec.appendChild(h('div', { class: 'unmatched' }, h('h3', { text: 'Only in some runs' }),
      h('ul', null, un.map(function (u) { return h('li', { text: str(u) }); }))));
    return sec;
  }

  /** Accepts the report page's data ({kind: 'report', runs: [...]}) or a bare results.json. */
  function normalise(data) {
    data = obj(data);
    if (!Array.isArray(data.runs) && (data.configurations || data.training || data.flotilla_version)) {
      return { kind: 'report', title: 'flotilla report', runs: [{ name: '', dir: '', report: data, cases: [] }], comparison: null };
    }
    return data;
  }

  function render(container, data) {
    data = normalise(data);
    const runs = arr(data.runs).map(obj);
    const root = h('div', { class: 'flotilla-report' },
      h('header', { class: 'report-header' }, h('h1', { text: str(data.title) || 'flotilla report' }),
        h('p', { class: 'muted' }, [isNum(data.generated_unix_ms) ? 'generated ' + time(data.generated_unix_ms) : null,
          runs.length > 1 ? runs.length + ' runs' : null].filter(Boolean).join(' · '))));
    if (runs.length > 1 || data.comparison) root.appendChild(safe('run comparison', function () { return runComparison(data); }));
    if (!runs.length) root.appendChild(note('This report holds no runs.'));
    const sections = runs.map(function (run, i) {
      const sec = h('section', { class: 'run', id: 'run-' + i, 'data-run': str(run.name), hidden: i > 0 });
      const r = safe('run ' + (i + 1), function () { return renderReportPanel(sec, run, { index: i, heading: runs.length > 1 }); });
      if (r && r.parentNode !== sec) sec.appendChild(r);
      return sec;
    });
    if (runs.length > 1) {
      const buttons = [];
      const select = function (which) {
        sections.forEach(function (sec, i) { sec.hidden = which !== 'all' && which !== i; });
        buttons.forEach(function (b) { b.classList.toggle('active', b.getAttribute('data-run') === String(which)); });
      };
      runs.forEach(function (run, i) {
        buttons.push(h('button', { type: 'button', class: 'tab' + (i === 0 ? ' active' : ''), 'data-run': String(i),
          text: str(run.name) || 'run ' + (i + 1), onclick: function () { select(i); } }));
      });
      buttons.push(h('button', { type: 'button', class: 'tab', 'data-run': 'all', text: 'all runs', onclick: function () { select('all'); } }));
      root.appendChild(h('nav', { class: 'run-selector', id: 'run-selector', 'aria-label': 'runs' }, h('span', { class: 'muted', text: 'run: ' }), buttons));
    }
    sections.forEach(function (sec) { root.appendChild(sec); });
    clear(container).appendChild(root);
    return root;
  }

  window.FlotillaReport = {
    render: render,
    renderReportPanel: renderReportPanel,
    scoreTable: scoreTable,
    scoreCharts: scoreCharts,
    scoreChart: scoreChart,
    comparisonsTable: comparisonsTable,
    trainingSection: trainingSection,
    lossChart: lossChart,
    h: h,
    svg: s,
    clear: clear,
    format: { num: num, int: int, signed: signed, pval: pval, bytes: bytes, duration: duration, ago: ago, clock: clock, time: time, share: share }
  };
})();

/* flotilla live dashboard: polls the coordinator's /api/state every 2 s and draws workers, sweeps,
   failures and the selected sweep's results (with FlotillaReport from report.js). Read-only unless a
   token is entered. Every text from the coordinator goes through textContent or attributes. */
(function () {
  'use strict';
  const R = window.FlotillaReport, h = R.h, F = R.format;
  const $ = function (id) { return document.getElementById(id); };
  const arr = function (v) { return Array.isArray(v) ? v : []; };
  const str = function (v) { return v === null || v === undefined ? '' : String(v); };
  const isNum = function (v) { return typeof v === 'number' && isFinite(v); };
  const FINISHED = ['succeeded', 'failed', 'cancelled'];
  const TOKEN_KEY = 'flotilla-token';

  let last = null;          // the latest /api/state
  let selected = null;      // sweep id the user clicked
  let timer = null, polling = false;
  const cancelMsgs = {};    // sweep id -> {text, cls, pre}
  let rep = { id: null };   // the shown report: {id, fetchedAt, text, final, inFlight, failed}

  function loadToken() { try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch (e) { return ''; } }
  function saveToken(v) { try { if (v) sessionStorage.setItem(TOKEN_KEY, v); else sessionStorage.removeItem(TOKEN_KEY); } catch (e) { /* storage off */ } }
  let token = loadToken();

  function badge(text, cls, title) { return h('span', { class: 'badge ' + (cls || ''), title: title, text: text }); }
  function setError(msg) { const e = $('error'); e.textContent = msg || ''; e.hidden = !msg; }
  function fill(tbody, rows, cols, empty) {
    R.clear(tbody);
    rows.forEach(function (r) { tbody.appendChild(r); });
    if (!rows.length) tbody.appendChild(h('tr', { class: 'empty' }, h('td', { colspan: cols, text: empty })));
  }
  function progress(done, running, failed, total, small) {
    const pc = function (x) { return total > 0 ? Math.max(0, Math.min(100, 100 * (x || 0) / total)).toFixed(2) + '%' : '0%'; };
    return h('div', { class: 'progress' + (small ? ' small' : ''), role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': total || 0,
      'aria-valuenow': done || 0, title: (done || 0) + ' done, ' + (running || 0) + ' running, ' + (failed || 0) + ' failed of ' + (total || 0) },
      h('div', { class: 'done', style: 'width:' + pc(done) }), h('div', { class: 'running', style: 'width:' + pc(running) }),
      h('div', { class: 'failed', style: 'width:' + pc(failed) }));
  }

  // ---------- workers ----------

  function workerRow(w, now) {
    const mem = [];
    if (w.gpu_memory_bytes > 0) mem.push('GPU ' + F.bytes(w.gpu_memory_bytes));
    if (w.ram_bytes > 0) mem.push('RAM ' + F.bytes(w.ram_bytes));
    if (isNum(w.memory_free_bytes)) mem.push(F.bytes(w.memory_free_bytes) + ' free');
    const shards = arr(w.current_shards), models = arr(w.models_loaded);
    return h('tr', { class: 'worker-row' + (w.connected ? '' : ' disconnected'), 'data-worker': str(w.id) },
      h('td', null, h('div', { class: 'mono strong', text: str(w.id) }), w.hostname ? h('div', { class: 'muted small', text: str(w.hostname) }) : null),
      h('td', null, badge(str(w.device) || '?', w.device === 'cpu' ? '' : 'info'), w.gpu_name ? ' ' + str(w.gpu_name) : null,
        isNum(w.cores) ? h('div', { class: 'muted small', text: w.cores + ' cores' }) : null),
      h('td', { class: 'small' }, mem.map(function (m) { return h('div', { text: m }); })),
      h('td', { class: 'num', text: F.int(w.running) + ' / ' + F.int(w.slots) }),
      h('td', { class: 'mono small' }, shards.length ? shards.map(function (s) { return h('div', { text: str(s) }); }) : h('span', { class: 'muted', text: 'idle' })),
      h('td', { class: 'small wrap', text: models.map(str).join(', ') || '–' }),
      h('td', { class: 'num', text: F.num(w.units_per_second) }),
      h('td', { class: 'num', text: F.int(w.shards_completed) }),
      h('td', { title: F.time(w.last_seen_unix_ms), text: isNum(w.last_seen_unix_ms) ? F.ago(Math.max(0, now - w.last_seen_unix_ms)) : '–' }),
      h('td', { class: 'wrap' }, w.connected ? badge('connected', 'good') : badge('disconnected', 'bad'),
        w.paused ? [' ', badge('paused: ' + str(w.paused), 'warn paused', str(w.paused))] : null));
  }

  // ---------- sweeps ----------

  function sortedSweeps(state) {
    return arr(state && state.sweeps).filter(function (s) { return s && s.id !== undefined; }).slice()
      .sort(function (a, b) { return (b.created_unix_ms || 0) - (a.created_unix_ms || 0); });
  }
  function selectedSweep(state) {
    const sweeps = sortedSweeps(state);
    return sweeps.find(function (s) { return str(s.id) === selected; }) || sweeps[0] || null;
  }

  function jobRow(j) {
    const t = j.training && typeof j.training === 'object' ? j.training : null;
    let total = j.shards_total || 0, done = j.shards_done || 0;
    if (!total && t && t.steps > 0) { total = t.steps; done = t.step || 0; }
    const info = [F.int(j.shards_done) + '/' + F.int(j.shards_total) + ' shards'];
    if (j.shards_running > 0) info.push(j.shards_running + ' running');
    if (j.shards_failed > 0) info.push(j.shards_failed + ' failed');
    if (t) {
      if (t.rounds > 0) info.push('round ' + F.int(t.round) + '/' + F.int(t.rounds));
      info.push('step ' + F.int(t.step) + '/' + F.int(t.steps));
      if (isNum(t.loss)) info.push('loss ' + F.num(t.loss, 4));
    }
    return [
      h('div', { class: 'job-label', title: str(j.label) }, badge(str(j.state), 'state-' + str(j.state)), ' ', h('span', { class: 'muted', text: str(j.kind) + ' ' }), str(j.label)),
      progress(done, t && !j.shards_total ? 0 : j.shards_running, j.shards_failed, total, true),
      h('div', { class: 'job-info', title: info.join(' · ') + (j.error ? '\n' + str(j.error) : '') }, info.join(' · '),
        j.error ? h('div', { class: 'bad', text: str(j.error) }) : null)
    ];
  }

  function sweepCard(s, isSelected) {
    const id = str(s.id), msg = cancelMsgs[id];
    const canCancel = token && (s.state === 'running' || s.state === 'queued');
    const select = function () { selected = id; renderSweeps(); updateReport(); };
    return h('div', { class: 'sweep' + (isSelected ? ' selected' : ''), 'data-sweep': id, tabindex: 0, onclick: select,
      onkeydown: function (e) { if (e.key === 'Enter' && e.target === e.currentTarget) select(); } },
      h('div', { class: 'sweep-head' }, h('span', { class: 'name', text: str(s.name) || id }), badge(str(s.state), 'state-' + str(s.state)),
        h('span', { class: 'muted small mono', text: id }), h('span', { class: 'spacer' }),
        h('span', { class: 'small', text: F.int(s.shards_done) + ' / ' + F.int(s.shards_total) + ' shards' +
          (s.shards_running > 0 ? ' · ' + s.shards_running + ' running' : '') + (s.shards_failed > 0 ? ' · ' + s.shards_failed + ' failed' : '') }),
        canCancel ? h('button', { type: 'button', class: 'danger cancel', onclick: function (e) { e.stopPropagation(); cancel(id); }, text: 'Cancel' }) : null),
      progress(s.shards_done, s.shards_running, s.shards_failed, s.shards_total || 0),
      h('div', { class: 'muted small', text: 'created ' + F.time(s.created_unix_ms) + ' · updated ' + F.time(s.updated_unix_ms) }),
      s.error ? h('div', { class: 'bad small', text: str(s.error) }) : null,
      arr(s.jobs).length ? h('div', { class: 'jobs' }, arr(s.jobs).map(jobRow)) : null,
      msg ? h('div', { class: 'cancel-result ' + (msg.cls || '') }, h('span', { text: msg.text }), msg.pre ? h('pre', { text: msg.pre }) : null) : null);
  }

  let sweepsDrawn = '', failuresDrawn = '';
  function renderSweeps() {
    const list = $('sweep-list'), sweeps = sortedSweeps(last), sel = selectedSweep(last);
    // Redraw only on change, so a click or a text selection is not lost under a redraw.
    const sig = JSON.stringify([sweeps, sel && sel.id, !!token, cancelMsgs]);
    if (sig === sweepsDrawn && list.firstChild) return;
    sweepsDrawn = sig;
    R.clear(list);
    if (!sweeps.length) { list.appendChild(h('p', { class: 'note', text: 'no sweeps yet' })); return; }
    sweeps.forEach(function (s) { list.appendChild(sweepCard(s, sel && s.id === sel.id)); });
  }

  async function cancel(id) {
    cancelMsgs[id] = { text: 'cancelling…' };
    renderSweeps();
    let msg;
    try {
      const res = await fetch('/api/sweeps/' + encodeURIComponent(id) + '/cancel', { method: 'POST', headers: { Authorization: 'Bearer ' + token } });
      const text = await res.text();
      if (res.status === 200) {
        let pretty = text;
        try { pretty = JSON.stringify(JSON.parse(text), null, 2); } catch (e) { /* not JSON: shown as is */ }
        msg = { text: 'cancel accepted:', cls: 'ok', pre: pretty };
      } else if (res.status === 401) {
        msg = { text: 'wrong token: the coordinator refused the cancel (401)', cls: 'bad' };
      } else {
        msg = { text: 'cancel failed (HTTP ' + res.status + ')' + (text ? ': ' + text : ''), cls: 'bad' };
      }
    } catch (e) {
      msg = { text: 'cancel failed: ' + (e && e.message ? e.message : e), cls: 'bad' };
    }
    cancelMsgs[id] = msg;
    renderSweeps();
    schedule(0);
  }

  // ---------- failures ----------

  function failureRow(f) {
    return h('tr', { class: 'failure-row', 'data-sweep': str(f.sweep_id) },
      h('td', { class: 'nowrap', text: F.time(f.at_unix_ms) }),
      h('td', { class: 'mono small', text: str(f.sweep_id) }), h('td', { class: 'mono small', text: str(f.shard_id) }),
      h('td', { class: 'num', text: F.int(f.attempt) }), h('td', { class: 'mono small', text: str(f.worker_id) || '–' }),
      h('td', null, badge(str(f.kind), f.kind === 'task' ? 'bad' : 'warn')),
      h('td', { class: 'small', style: 'white-space: pre-wrap; word-break: break-word', text: str(f.message) }));
  }

  // ---------- results of the selected sweep ----------

  function showReportNote(text, cls) { R.clear($('report')).appendChild(h('p', { class: 'note ' + (cls || ''), text: text })); }

  function updateReport() {
    const s = selectedSweep(last);
    if (!s) { rep = { id: null }; $('results-title').textContent = 'Results'; $('results-status').textContent = ''; showReportNote('no sweep selected'); return; }
    const id = str(s.id);
    if (rep.id !== id) {
      rep = { id: id, fetchedAt: 0, text: null, final: false, inFlight: false, failed: false };
      showReportNote('loading…');
    }
    R.clear($('results-title')).appendChild(document.createTextNode('Results · ' + (str(s.name) || id) + ' '));
    $('results-title').appendChild(badge(str(s.state), 'state-' + str(s.state)));
    const finished = FINISHED.indexOf(s.state) >= 0, age = Date.now() - rep.fetchedAt;
    if (rep.inFlight) return;
    if (finished ? !rep.final && (!rep.failed || age >= 5000) : age >= 5000) fetchReport(rep, finished);
  }

  async function fetchReport(mine, final) {
    mine.inFlight = true;
    try {
      const res = await fetch('/api/sweeps/' + encodeURIComponent(mine.id) + '/report', { cache: 'no-store' });
      const text = await res.text();
      if (mine !== rep) return;
      mine.fetchedAt = Date.now();
      if (res.status === 404) { mine.final = final; mine.failed = false; mine.text = null; showReportNote('no results yet'); return; }
      if (!res.ok) throw new Error('HTTP ' + res.status + (text ? ': ' + text.slice(0, 300) : ''));
      mine.final = final; mine.failed = false;
      $('results-status').textContent = 'results updated ' + F.clock(mine.fetchedAt);
      if (text === mine.text) return;
      mine.text = text;
      const body = JSON.parse(text) || {};
      const report = body.report && typeof body.report === 'object' ? body.report : null;
      if (!report) { showReportNote('no results yet'); return; }
      const s = selectedSweep(last) || {};
      R.renderReportPanel($('report'), { name: str(s.name) || mine.id, dir: '', report: report, cases: [] },
        { index: 0, cases: false, provenance: false, heading: false });
    } catch (e) {
      if (mine !== rep) return;
      mine.failed = true; mine.fetchedAt = Date.now(); mine.text = null;
      showReportNote('could not load the results: ' + (e && e.message ? e.message : e), 'bad');
    } finally {
      mine.inFlight = false;
    }
  }

  // ---------- polling ----------

  function render(state) {
    last = state;
    const c = state.coordinator || {}, now = isNum(c.now_unix_ms) ? c.now_unix_ms : Date.now();
    $('coordinator').textContent = 'coordinator ' + (str(c.id) || '?') + ' · version ' + (str(c.version) || '?') + ' · up ' + F.duration(c.uptime_s);
    const workers = arr(state.workers).filter(Boolean).slice().sort(function (a, b) {
      return (b.connected ? 1 : 0) - (a.connected ? 1 : 0) || (str(a.id) < str(b.id) ? -1 : str(a.id) > str(b.id) ? 1 : 0);
    });
    fill($('workers').tBodies[0], workers.map(function (w) { return workerRow(w, now); }), 10, 'no workers connected');
    renderSweeps();
    const failures = arr(state.failures).filter(Boolean).slice().sort(function (a, b) { return (b.at_unix_ms || 0) - (a.at_unix_ms || 0); }).slice(0, 100);
    const sig = JSON.stringify(failures);
    if (sig !== failuresDrawn) { failuresDrawn = sig; fill($('failures').tBodies[0], failures.map(failureRow), 7, 'no failures'); }
  }

  function schedule(ms) { clearTimeout(timer); timer = setTimeout(poll, ms); }

  async function poll() {
    if (polling) return;
    polling = true;
    clearTimeout(timer);
    let state = null;
    try {
      const res = await fetch('/api/state', { cache: 'no-store' });
      if (!res.ok) throw new Error('HTTP ' + res.status);
      state = await res.json();
    } catch (e) {
      setError('cannot reach the coordinator (' + (e && e.message ? e.message : e) + '); retrying every 2 s');
    }
    if (state && typeof state === 'object') {
      try {
        render(state);
        setError(null);
        $('status').textContent = 'updated ' + F.clock(Date.now());
        document.body.setAttribute('data-ready', '1');
        updateReport();
      } catch (e) {
        setError('could not draw the state: ' + (e && e.message ? e.message : e));
      }
    }
    polling = false;
    schedule(2000);
  }

  $('token-form').addEventListener('submit', function (e) { e.preventDefault(); });
  const input = $('token');
  input.value = token;
  input.addEventListener('input', function () {
    token = input.value.trim();
    saveToken(token);
    if (last) renderSweeps();
  });
  poll();
})();

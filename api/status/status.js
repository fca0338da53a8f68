// SPDX-License-Identifier: MIT
// status.js: the status page's life: polls /readyz, /metrics, /v1/stale and /v1/rejects, follows
// /v1/watch (fetch streaming, so the bearer token can travel in a header), draws the chart.
'use strict';

(function () {
  const TOKEN_KEY = 'statemirror-token';
  const POLL_MS = 2000;
  const SAMPLES = 150;          // 5 minutes of 2 s samples
  const STALE_ITEMS = 200;      // stale keys fetched for the examples column
  const REJECTS_SHOWN = 10;

  const $ = (id) => document.getElementById(id);
  const samples = [];           // {t, rate, stale}
  let lastIngest = null;        // {t, total}
  let token = sessionStorage.getItem(TOKEN_KEY) || '';
  let needToken = false;
  let refreshTimer = null;
  let watchAbort = null;

  class Unauthorised extends Error {}

  function headers() {
    return token ? { Authorization: 'Bearer ' + token } : {};
  }

  async function api(path, asText) {
    const r = await fetch(path, { headers: headers(), cache: 'no-store' });
    if (r.status === 401) throw new Unauthorised(path);
    if (!r.ok && !(path === '/readyz' && r.status === 503)) throw new Error(path + ': HTTP ' + r.status);
    return asText ? r.text() : r.json();
  }

  // ---- the token ---------------------------------------------------------

  function askToken(wrong) {
    needToken = true;
    $('token-form').hidden = false;
    $('main').classList.add('quiet');
    $('token-error').textContent = wrong ? 'That token was refused.' : '';
    $('live').textContent = 'token needed';
    $('live').className = 'pill bad';
    $('token-input').focus();
  }

  $('token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const t = $('token-input').value.trim();
    if (!t) return;
    token = t;
    sessionStorage.setItem(TOKEN_KEY, t);
    $('token-input').value = '';
    needToken = false;
    $('token-form').hidden = true;
    $('main').classList.remove('quiet');
    refresh().then(() => { if (!needToken) startWatch(); }, () => {});
  });

  // ---- /metrics ----------------------------------------------------------

  // name -> [{labels, value}]
  function parseMetrics(text) {
    const m = new Map();
    for (const line of text.split('\n')) {
      if (!line || line[0] === '#') continue;
      const sp = line.lastIndexOf(' ');
      if (sp < 0) continue;
      const sample = line.slice(0, sp);
      const value = Number(line.slice(sp + 1));
      const br = sample.indexOf('{');
      const name = br < 0 ? sample : sample.slice(0, br);
      const labels = br < 0 ? '' : sample.slice(br);
      if (!m.has(name)) m.set(name, []);
      m.get(name).push({ labels, value });
    }
    return m;
  }

  function metric(m, name, labelPart) {
    const s = m.get(name);
    if (!s) return null;
    let sum = 0, seen = false;
    for (const x of s) {
      if (labelPart === undefined ? x.labels === '' : x.labels.includes(labelPart || '')) {
        sum += x.value;
        seen = true;
      }
    }
    return seen ? sum : null;
  }

  // ---- rendering ---------------------------------------------------------

  function setState(el, text, cls) {
    el.textContent = text;
    el.className = 'big ' + cls;
  }

  function fmtRate(r) {
    if (r === null) return '–';
    if (r >= 10000) return (r / 1000).toFixed(0) + 'k/s';
    if (r >= 1000) return (r / 1000).toFixed(1) + 'k/s';
    return r.toFixed(r < 10 ? 1 : 0) + '/s';
  }

  function cell(tr, text, cls) {
    const td = document.createElement('td');
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function renderStale(s) {
    const n = s.count || 0;
    setState($('stale-count'), String(n), n ? 'bad' : 'ok');
    // Each listed key goes to the longest group prefix that holds it (its
    // producer's, else its parent's), as the daemon counted it, so a group's
    // examples are its own keys, never those of a group below it.
    const groups = s.groups || [];
    const mine = new Map(groups.map((g) => [g.prefix, { topics: [], reasons: new Set() }]));
    for (const it of s.items || []) {
      let best = null;
      for (const g of groups) {
        const p = g.prefix;
        // a key of one level: in the group named by it, or the top's ("")
        const holds = it.topic.startsWith(p + '/') ||
          (!it.topic.includes('/') && (it.topic === p || p === ''));
        if (holds &&
            (best === null || p.length > best.length)) best = p;
      }
      if (best === null) continue;
      mine.get(best).topics.push(it.topic);
      if (it.stale_reason) mine.get(best).reasons.add(it.stale_reason);
    }
    const body = $('stale-groups').tBodies[0];
    body.replaceChildren();
    for (const g of groups) {
      const tr = document.createElement('tr');
      tr.className = 'group';
      tr.dataset.prefix = g.prefix;
      cell(tr, g.prefix, 'mono');
      cell(tr, String(g.count), 'num');
      // The group's reason when the daemon gives one, else its keys' reasons.
      const own = mine.get(g.prefix);
      const why = g.reason || [...own.reasons].join(', ');
      cell(tr, why || '–', 'reason');
      const ex = own.topics.slice(0, 3).map((t) => t.slice(g.prefix.length + 1) || t);
      cell(tr, ex.join(', ') + (g.count > ex.length ? ', …' : ''), 'mono quiet');
      body.appendChild(tr);
    }
    $('stale-groups').hidden = !(s.groups && s.groups.length);
    $('stale-none').hidden = !!(s.groups && s.groups.length);
  }

  function renderRejects(r, total) {
    const items = (r.items || []).slice(0, REJECTS_SHOWN);
    const body = $('rejects').tBodies[0];
    body.replaceChildren();
    for (const it of items) {
      const tr = document.createElement('tr');
      cell(tr, (it.time || '').replace('T', ' ').replace('Z', ''), 'mono');
      cell(tr, it.reason || '?', 'warn');
      cell(tr, it.topic || '?', 'mono');
      cell(tr, it.payload_text !== undefined ? it.payload_text
        : it.payload_base64 !== undefined ? 'base64:' + it.payload_base64 : '', 'mono quiet');
      body.appendChild(tr);
    }
    $('rejects').hidden = !items.length;
    $('rejects-none').hidden = !!items.length;
    setState($('rejects-count'), total === null ? String((r.items || []).length) : String(total),
      total ? 'warn' : '');
  }

  function drawChart() {
    const c = $('chart');
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth || c.width, h = c.clientHeight || c.height;
    if (c.width !== Math.round(w * dpr)) { c.width = Math.round(w * dpr); c.height = Math.round(h * dpr); }
    const g = c.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const css = getComputedStyle(document.documentElement);
    const pad = { l: 44, r: 44, t: 10, b: 18 };
    const iw = w - pad.l - pad.r, ih = h - pad.t - pad.b;
    const maxRate = Math.max(1, ...samples.map((s) => s.rate || 0));
    const maxStale = Math.max(1, ...samples.map((s) => s.stale || 0));
    g.strokeStyle = css.getPropertyValue('--line');
    g.lineWidth = 1;
    g.strokeRect(pad.l, pad.t, iw, ih);
    g.fillStyle = css.getPropertyValue('--quiet');
    g.font = '11px system-ui, sans-serif';
    g.textAlign = 'right';
    g.fillText(fmtRate(maxRate), pad.l - 4, pad.t + 10);
    g.fillText('0', pad.l - 4, pad.t + ih);
    g.textAlign = 'left';
    g.fillText(String(maxStale), pad.l + iw + 4, pad.t + 10);
    g.fillText('0', pad.l + iw + 4, pad.t + ih);
    const line = (key, max, color) => {
      g.strokeStyle = color;
      g.lineWidth = 2;
      g.beginPath();
      samples.forEach((s, i) => {
        const x = pad.l + (iw * (SAMPLES - samples.length + i)) / (SAMPLES - 1);
        const y = pad.t + ih - (ih * (s[key] || 0)) / max;
        if (i) g.lineTo(x, y); else g.moveTo(x, y);
      });
      g.stroke();
    };
    line('rate', maxRate, css.getPropertyValue('--ingest'));
    line('stale', maxStale, css.getPropertyValue('--stale'));
  }

  // ---- polling -----------------------------------------------------------

  // tick: a periodic sample for the chart and the ingest rate; otherwise a
  // refresh after a change only updates what is shown.
  async function refresh(tick) {
    if (needToken) return;
    try {
      const [ready, mtext, stale, rejects] = await Promise.all([
        api('/readyz'), api('/metrics', true), api('/v1/stale?limit=' + STALE_ITEMS), api('/v1/rejects'),
      ]);
      const m = parseMetrics(mtext);
      const connected = metric(m, 'statemirror_broker_connected') === 1;
      const synced = metric(m, 'statemirror_synced');
      setState($('link'), connected ? 'connected' : 'disconnected', connected ? 'ok' : 'bad');
      const isSynced = synced === null ? ready.ready : synced === 1;
      setState($('synced'), isSynced ? 'yes' : 'no', isSynced ? 'ok' : 'warn');
      $('ready-reason').hidden = !!ready.ready;
      $('ready-reason').textContent = ready.ready ? '' : 'Not ready: ' + (ready.reason || 'unknown');
      const keys = metric(m, 'statemirror_keys');
      setState($('keys'), keys === null ? '–' : String(keys), '');
      let total = metric(m, 'statemirror_received_total');
      if (total === null) total = metric(m, 'statemirror_messages_total', '');
      const now = performance.now();
      if (tick || !lastIngest) {
        let rate = null;
        if (lastIngest && total !== null && now > lastIngest.t)
          rate = Math.max(0, ((total - lastIngest.total) * 1000) / (now - lastIngest.t));
        if (total !== null) lastIngest = { t: now, total };
        if (rate !== null) setState($('ingest'), fmtRate(rate), '');
        samples.push({ t: Date.now(), rate: rate || 0, stale: stale.count || 0 });
        if (samples.length > SAMPLES) samples.shift();
      } else {
        samples[samples.length - 1].stale = stale.count || 0;
      }
      renderStale(stale);
      renderRejects(rejects, metric(m, 'statemirror_rejects_total', ''));
      drawChart();
      $('updated').textContent = 'updated ' + new Date().toLocaleTimeString();
      document.body.dataset.loaded = 'true';
    } catch (e) {
      if (e instanceof Unauthorised) {
        askToken(!!token);
        return;
      }
      setState($('link'), 'unreachable', 'bad');
      $('updated').textContent = 'cannot reach the daemon: ' + e.message;
    }
  }

  // A stale/fresh/delete event: refresh soon, once for a burst of them.
  function soon() {
    if (refreshTimer) return;
    refreshTimer = setTimeout(() => { refreshTimer = null; refresh(); }, 150);
  }

  // ---- /v1/watch, read with fetch so that it can carry the token ----------

  function setLive(text, cls) {
    $('live').textContent = text;
    $('live').className = 'pill ' + cls;
  }

  async function watchOnce(signal) {
    // Live changes only: the page re-reads the lists after every reconnect,
    // so it needs no replay (and never asks for a snapshot of every key).
    const r = await fetch('/v1/watch?filter=%23', {
      headers: Object.assign({ Accept: 'text/event-stream' }, headers()), cache: 'no-store', signal,
    });
    if (r.status === 401) throw new Unauthorised('/v1/watch');
    if (!r.ok || !r.body) throw new Error('/v1/watch: HTTP ' + r.status);
    setLive('live', 'ok');
    soon();
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let rest = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      rest += value;
      let nl;
      while ((nl = rest.indexOf('\n')) >= 0) {
        const line = rest.slice(0, nl).replace(/\r$/, '');
        rest = rest.slice(nl + 1);
        // Only the event names matter here: updates are counted by /metrics.
        if (line === 'event: stale' || line === 'event: fresh' || line === 'event: delete') soon();
      }
      if (rest.length > (1 << 20)) rest = ''; // a line longer than any record: drop it
    }
  }

  async function startWatch() {
    if (watchAbort) watchAbort.abort();
    const ctl = new AbortController();
    watchAbort = ctl;
    let backoff = 500;
    while (!ctl.signal.aborted && !needToken) {
      try {
        await watchOnce(ctl.signal);
        backoff = 500;
      } catch (e) {
        if (ctl.signal.aborted) return;
        if (e instanceof Unauthorised) {
          askToken(!!token);
          return;
        }
      }
      setLive('reconnecting', 'warn');
      await new Promise((res) => setTimeout(res, backoff));
      backoff = Math.min(backoff * 2, 10000);
    }
  }

  $('host').textContent = location.host;
  window.addEventListener('resize', drawChart);
  refresh().then(() => { if (!needToken) startWatch(); });
  setInterval(() => refresh(true), POLL_MS);
})();

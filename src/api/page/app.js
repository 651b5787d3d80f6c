// The operator's page: polls GET /status, draws the totals, the hour's chart
// and one row per job (the 100 most recently updated, or every job page by
// page through GET /jobs), lists a job's failed images on demand, and
// steers jobs through the JSON API. Lists follow the API's `Link: <…>;
// rel="next"` header.
// Every value from the API reaches the DOM as text (textContent, attributes),
// never as markup. Styles are set through classes or the CSSOM, never through
// inline style attributes, so a strict Content-Security-Policy holds.
'use strict';

(() => {
  const POLL_MS = 2000;
  const TIMEOUT_MS = 8000;
  const TOKEN_KEY = 'mld.apiToken';
  const SVG_NS = 'http://www.w3.org/2000/svg';
  // Client-side job rates use the counts seen over this window.
  const RATE_WINDOW_MS = 30000;
  const ACTIVE = ['queued', 'enumerating', 'downloading'];
  // Jobs per GET /jobs page, and failed images per GET /jobs/{id}/images page.
  const JOBS_PAGE = 100;
  const FAILURES_PAGE = 20;
  // Every job's full rows (whole selections) are read again this often;
  // between reads, /status's fresh copies of the recent ones stand in.
  const ALL_JOBS_EVERY_MS = 10000;

  const $ = (id) => document.getElementById(id);
  const show = (el, on) => { el.hidden = !on; };

  let token = sessionStorage.getItem(TOKEN_KEY) || '';
  let authorised = false;
  let timer = 0;
  let polling = false;
  let pollAgain = false;
  let lastGood = null;
  let failingSince = null;
  const views = new Map();
  // Every job page by page (GET /jobs) instead of /status's recent ones;
  // how many pages to show.
  let allJobs = false;
  let jobPages = 1;
  let allCache = null;
  let allFetchedAt = 0;

  class Unauthorized extends Error {}

  // ---- talking to the API -------------------------------------------------

  // One request; resolves to {ok, status, data} or throws (network, timeout,
  // Unauthorized). `data` is the parsed JSON body, or null.
  async function api(method, path, body) {
    const headers = { Accept: 'application/json' };
    if (token) headers.Authorization = 'Bearer ' + token;
    const init = { method, headers, cache: 'no-store', credentials: 'omit' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    if (AbortSignal.timeout) init.signal = AbortSignal.timeout(TIMEOUT_MS);
    const res = await fetch(path, init);
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
    if (res.status === 401) throw new Unauthorized(errorText(res.status, data));
    return { ok: res.ok, status: res.status, data, next: nextLink(res.headers.get('Link')) };
  }

  // The `rel="next"` target of a Link header, or null.
  function nextLink(header) {
    const m = /<([^>]*)>\s*;\s*rel="?next"?/.exec(header || '');
    return m ? m[1] : null;
  }

  // Every job so far ({list, more}): the pages shown, read again every
  // ALL_JOBS_EVERY_MS; in between, `recent` (from /status) refreshes the
  // rows it has, keeping the whole selections already read.
  async function everyJob(recent) {
    if (!allCache || performance.now() - allFetchedAt >= ALL_JOBS_EVERY_MS) {
      allCache = await jobPagesUpTo(jobPages);
      allFetchedAt = performance.now();
    }
    const fresh = new Map(recent.map((job) => [job.id, job]));
    const list = allCache.list.map((job) => {
      const f = fresh.get(job.id);
      return f ? Object.assign({}, f, { image_ids: job.image_ids, sequence_ids: job.sequence_ids }) : job;
    });
    return { list, more: allCache.more };
  }

  // Up to `pages` pages of GET /jobs, following each page's next link:
  // {list, more}.
  async function jobPagesUpTo(pages) {
    let list = [];
    let url = '/jobs?limit=' + JOBS_PAGE;
    for (let i = 0; i < pages && url; i += 1) {
      const r = await api('GET', url);
      if (!r.ok || !Array.isArray(r.data)) throw new Error(errorText(r.status, r.data));
      list = list.concat(r.data);
      url = r.next;
    }
    return { list, more: !!url };
  }

  // The API's own message ({"error": "..."}), verbatim.
  function errorText(status, data) {
    if (data && typeof data.error === 'string') return data.error;
    return 'the daemon answered HTTP ' + status;
  }

  function failureText(err) {
    if (err && err.name === 'TimeoutError') return 'no answer within ' + TIMEOUT_MS / 1000 + ' s';
    return 'the daemon cannot be reached (' + (err && err.message ? err.message : String(err)) + ')';
  }

  // ---- polling ------------------------------------------------------------

  async function poll() {
    if (polling) { pollAgain = true; return; }
    polling = true;
    clearTimeout(timer);
    try {
      const r = await api('GET', '/status');
      if (!r.ok || !r.data) throw new Error(errorText(r.status, r.data));
      const all = allJobs ? await everyJob(r.data.jobs || []) : null;
      online();
      render(r.data, all);
    } catch (err) {
      if (err instanceof Unauthorized) {
        polling = false;
        pollAgain = false;
        askForToken(true);
        return;
      }
      offline(err);
    }
    polling = false;
    if (pollAgain) { pollAgain = false; poll(); return; }
    timer = setTimeout(poll, POLL_MS);
  }

  function online() {
    failingSince = null;
    lastGood = new Date();
    show($('offline'), false);
    document.body.classList.remove('stale');
    if (!authorised) {
      authorised = true;
      show($('loading'), false);
      show($('login'), false);
      show($('app'), true);
      show($('forget'), token !== '');
    }
    $('updated').textContent = 'Updated ' + lastGood.toLocaleTimeString();
  }

  function offline(err) {
    if (!failingSince) failingSince = new Date();
    const since = failingSince.toLocaleTimeString();
    let text = 'The daemon is not answering (since ' + since + '): ' + failureText(err) +
      '. Retrying every ' + POLL_MS / 1000 + ' s.';
    if (lastGood) text += ' The figures below are from ' + lastGood.toLocaleTimeString() + '.';
    $('offline').textContent = text;
    show($('offline'), true);
    document.body.classList.add('stale');
  }

  // ---- the token prompt ---------------------------------------------------

  // Shows nothing but the prompt: the jobs and totals are removed, not hidden.
  function askForToken(refused) {
    const hadToken = token !== '';
    clearTimeout(timer);
    authorised = false;
    token = '';
    sessionStorage.removeItem(TOKEN_KEY);
    views.clear();
    allJobs = false;
    allCache = null;
    show($('jobs-more'), false);
    $('jobs').replaceChildren();
    $('chart').replaceChildren();
    for (const id of ['t-images', 't-failed', 't-bytes', 't-rate', 't-byterate', 't-eta']) $(id).textContent = '–';
    show($('app'), false);
    show($('loading'), false);
    show($('offline'), false);
    show($('forget'), false);
    $('updated').textContent = '';
    document.body.classList.remove('stale');
    const error = $('login-error');
    error.textContent = refused && hadToken ? 'The daemon refused this token.' : '';
    show(error, refused && hadToken);
    show($('login'), true);
    $('token').value = '';
    $('token').focus();
  }

  $('login-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const value = $('token').value.trim();
    if (!value) return;
    token = value;
    sessionStorage.setItem(TOKEN_KEY, token);
    show($('login-error'), false);
    poll();
  });

  $('forget').addEventListener('click', () => askForToken(false));

  // ---- formatting ---------------------------------------------------------

  const int = (n) => Number(n || 0).toLocaleString('en-US');

  function bytes(n) {
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
    let v = Number(n || 0);
    let u = 0;
    while (v >= 1024 && u < units.length - 1) { v /= 1024; u += 1; }
    return u === 0 ? v + ' B' : v.toFixed(u >= 3 ? 2 : 1) + ' ' + units[u];
  }

  function duration(secs) {
    if (secs === null || secs === undefined || !isFinite(secs)) return '–';
    let s = Math.max(0, Math.round(secs));
    if (s < 60) return s + ' s';
    const d = Math.floor(s / 86400); s -= d * 86400;
    const h = Math.floor(s / 3600); s -= h * 3600;
    const m = Math.floor(s / 60); s -= m * 60;
    if (d > 0) return d + ' d ' + h + ' h';
    if (h > 0) return h + ' h ' + m + ' min';
    return m + ' min ' + s + ' s';
  }

  const perSecond = (perSec, bytesPerSec) =>
    perSec.toFixed(perSec < 10 ? 1 : 0) + ' img/s · ' + bytes(bytesPerSec) + '/s';

  function when(iso) {
    const t = new Date(iso);
    return isNaN(t) ? String(iso) : t.toLocaleString();
  }

  // A date filter: the day alone when it is midnight UTC.
  const day = (iso) => String(iso).replace(/T00:00:00(\.0+)?Z$/, '');

  // An id list, or /status's summary of one ({count}).
  function listOf(ids, one, many) {
    if (ids && !Array.isArray(ids) && typeof ids.count === 'number') {
      return int(ids.count) + ' ' + (ids.count === 1 ? one : many);
    }
    const list = Array.isArray(ids) ? ids : [];
    const head = list.slice(0, 2).join(', ');
    return list.length + ' ' + (list.length === 1 ? one : many) + ': ' + head + (list.length > 2 ? ', …' : '');
  }

  function source(job) {
    switch (job.source_kind) {
      case 'username': return 'user ' + job.username;
      case 'organization': return 'organization ' + job.organization_id;
      case 'sequences': return listOf(job.sequence_ids, 'sequence', 'sequences');
      case 'images': return listOf(job.image_ids, 'image', 'images');
      default: return String(job.source_kind);
    }
  }

  function selection(job) {
    const parts = [job.quality === 'original' ? 'original size' : job.quality + ' px'];
    parts.push(job.format === 'webp' ? 'WebP' : 'JPEG');
    if (job.package === 'tar') parts.push('tar per date');
    if (Array.isArray(job.bbox)) parts.push('bbox ' + job.bbox.join(', '));
    if (job.start_captured_at) parts.push('from ' + day(job.start_captured_at));
    if (job.end_captured_at) parts.push('before ' + day(job.end_captured_at));
    if (job.pano === 'only') parts.push('panoramas only');
    if (job.pano === 'exclude') parts.push('no panoramas');
    if (job.resync_every) parts.push('re-sync every ' + job.resync_every);
    return parts.join(' · ');
  }

  const PAUSE_REASONS = {
    user: 'Paused by an operator.',
    disk_full: 'Paused: the disk is full. It resumes by itself once there is space.',
    token_rejected: 'Paused: Mapillary rejected the access token. It resumes at the next start with a valid token.',
  };

  // ---- totals and chart ---------------------------------------------------

  // `all`: every job so far (GET /jobs pages) when showing them all.
  function render(report, all) {
    const t = report.totals || {};
    $('t-images').textContent = int(t.done) + ' / ' + int(t.discovered);
    $('t-failed').textContent = int(t.failed) + (t.deleted ? ' (' + int(t.deleted) + ' deleted)' : '');
    $('t-bytes').textContent = bytes(t.bytes_done);
    const tp = report.throughput || { images_per_sec: 0, bytes_per_sec: 0 };
    $('t-rate').textContent = tp.images_per_sec.toFixed(tp.images_per_sec < 10 ? 1 : 0) + ' img/s';
    $('t-byterate').textContent = bytes(tp.bytes_per_sec) + '/s';
    $('t-eta').textContent = t.pending + t.in_progress > 0 ? duration(report.eta_seconds) : '–';
    chart(report.throughput_history || []);
    jobs(all ? all.list : report.jobs || []);
    jobsMore(report, all);
  }

  // Says how many jobs the list leaves out, with the control that shows
  // them: every job, then one more page at a time.
  function jobsMore(report, all) {
    const total = report.jobs_total || 0;
    let text = '';
    if (all) {
      text = 'Showing ' + int(all.list.length) + ' of ' + int(total) + ' jobs, oldest first.';
    } else if (report.jobs_truncated) {
      text = 'Showing the ' + int((report.jobs || []).length) + ' most recently updated of ' + int(total) + ' jobs.';
    }
    $('jobs-more-text').textContent = text;
    show($('jobs-all'), !all && !!report.jobs_truncated);
    show($('jobs-next'), !!all && all.more);
    show($('jobs-recent'), !!all);
    show($('jobs-more'), text !== '');
  }

  $('jobs-all').addEventListener('click', () => { allJobs = true; jobPages = 1; allCache = null; poll(); });
  $('jobs-next').addEventListener('click', () => { jobPages += 1; allCache = null; poll(); });
  $('jobs-recent').addEventListener('click', () => { allJobs = false; jobPages = 1; allCache = null; poll(); });

  function svg(name, attrs) {
    const el = document.createElementNS(SVG_NS, name);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    return el;
  }

  function chart(history) {
    const W = 600;
    const H = 100;
    const n = Math.max(history.length, 1);
    const peak = history.reduce((m, b) => Math.max(m, b.images || 0), 0);
    const root = svg('svg', { viewBox: '0 0 ' + W + ' ' + H, preserveAspectRatio: 'none', role: 'img',
      'aria-label': 'Images completed per minute over the last hour' });
    root.appendChild(svg('line', { x1: 0, y1: H - 0.5, x2: W, y2: H - 0.5, class: 'axis' }));
    const slot = W / n;
    history.forEach((b, i) => {
      const h = peak > 0 ? Math.max((b.images / peak) * (H - 4), b.images > 0 ? 2 : 0) : 0;
      const bar = svg('rect', { x: i * slot + 1, y: H - h, width: Math.max(slot - 2, 1), height: h, class: 'bar' });
      const title = svg('title', {});
      const at = new Date(b.minute);
      title.textContent = (isNaN(at) ? b.minute : at.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })) +
        ': ' + int(b.images) + ' images, ' + bytes(b.bytes);
      bar.appendChild(title);
      root.appendChild(bar);
    });
    $('chart').replaceChildren(root);
    $('chart-peak').textContent = peak > 0 ? 'peak ' + int(peak) + '/min' : 'nothing yet';
  }

  // ---- jobs ---------------------------------------------------------------

  function jobs(list) {
    const seen = new Set();
    const ol = $('jobs');
    list.forEach((job, i) => {
      seen.add(job.id);
      let view = views.get(job.id);
      if (!view) { view = makeView(job.id); views.set(job.id, view); }
      view.rate = jobRate(view, job);
      update(view, job);
      // Move only what is out of place: moving a node drops its focus.
      if (ol.children[i] !== view.el) ol.insertBefore(view.el, ol.children[i] || null);
    });
    for (const [id, view] of views) {
      if (!seen.has(id)) { view.el.remove(); views.delete(id); }
    }
    show($('no-jobs'), list.length === 0);
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  /** A labelled figure appended to `nums`: returns the span its value goes in. */
  function numberBox(nums, label, cls) {
    const box = el('span', 'num');
    box.append(el('span', 'muted small', label + ' '));
    const value = box.appendChild(el('span', cls));
    nums.append(box);
    return value;
  }

  function makeView(id) {
    const v = { id, samples: [], rate: null, confirming: false, busy: false, job: null };
    v.el = el('li', 'job');
    v.el.dataset.id = String(id);
    const head = el('div', 'job-head');
    head.append(el('span', 'job-id', '#' + id));
    v.title = head.appendChild(el('span', 'job-title'));
    v.state = head.appendChild(el('span', 'state'));
    v.sel = el('div', 'job-sel muted small');
    v.bar = el('progress');
    v.bar.setAttribute('aria-label', 'Job ' + id + ' progress');
    const nums = el('div', 'job-nums');
    const num = (label, cls) => numberBox(nums, label, cls);
    v.done = num('done', 'n-done');
    v.failed = num('failed', 'n-failed');
    v.size = num('archived', 'n-bytes');
    v.rateText = num('rate', 'n-rate');
    v.eta = num('ETA', 'n-eta');
    v.msgs = el('div', 'job-msgs');
    makeUploadView(v);
    const actions = v.actions = el('div', 'job-actions');
    const button = (label, cls, fn) => {
      const b = el('button', cls, label);
      b.type = 'button';
      b.addEventListener('click', fn);
      actions.append(b);
      return b;
    };
    v.pause = button('Pause', 'act-pause', () => act(v, 'POST', '/pause'));
    v.resume = button('Resume', 'act-resume', () => act(v, 'POST', '/resume'));
    v.retry = button('Retry failed', 'act-retry', () => act(v, 'POST', '/retry'));
    // Deleted images are left out of a plain retry (they would fail again);
    // this one asks for them too, for images that were only hidden a while.
    v.retryDeleted = button('Retry deleted', 'act-retry-deleted', () => act(v, 'POST', '/retry?include_deleted=true'));
    // Which images failed and why, beside the buttons that retry them.
    v.failuresButton = button('Show failures', 'act-failures', () => toggleFailures(v));
    v.cancel = button('Cancel…', 'act-cancel danger', () => { v.confirming = true; update(v, v.job); v.keep.focus(); });
    v.ask = actions.appendChild(el('span', 'confirm-text', 'Cancel job #' + id + '? Its files stay.'));
    v.confirm = button('Yes, cancel it', 'act-confirm danger', () => { v.confirming = false; act(v, 'DELETE', ''); });
    v.keep = button('Keep it', 'act-keep', () => { v.confirming = false; update(v, v.job); });
    v.error = el('p', 'msg error act-error', '');
    v.error.setAttribute('role', 'alert');
    v.error.hidden = true;
    v.failures = el('div', 'job-failures');
    v.failures.hidden = true;
    v.failList = v.failures.appendChild(el('ol', 'failure-list'));
    v.failMore = v.failures.appendChild(el('button', 'act-failures-more link', 'More failures'));
    v.failMore.type = 'button';
    v.failMore.addEventListener('click', () => loadFailures(v, v.failNext, true));
    v.failError = v.failures.appendChild(el('p', 'msg error', ''));
    v.failError.hidden = true;
    v.failOpen = false;
    v.failNext = null;
    v.failSeen = -1;
    v.el.append(head, v.sel, v.bar, nums, v.upload, v.msgs, actions, v.failures, v.error);
    return v;
  }

  // ---- a job's upload to the Internet Archive ----------------------------

  // The block under a job's figures, shown for a job with an `upload`.
  function makeUploadView(v) {
    v.upload = el('div', 'job-upload');
    v.upload.hidden = true;
    const head = v.upload.appendChild(el('div', 'upload-head'));
    head.append(el('span', 'upload-title', 'Internet Archive'));
    v.upState = head.appendChild(el('span', 'state upload-state'));
    v.upBar = v.upload.appendChild(el('progress', 'upload-bar'));
    v.upBar.setAttribute('aria-label', 'Job ' + v.id + ' upload to the Internet Archive');
    const nums = v.upload.appendChild(el('div', 'job-nums'));
    const num = (label, cls) => numberBox(nums, label, cls);
    v.upFiles = num('files confirmed', 'up-files');
    v.upBytes = num('sent', 'up-bytes');
    v.upItems = num('items', 'up-items');
    v.upError = v.upload.appendChild(el('p', 'msg error up-error', ''));
    v.upError.hidden = true;
  }

  // `up`: the job's `upload` ({state, items, files_total, files_confirmed,
  // bytes_sent, bytes_total, last_error}), or nothing.
  function updateUpload(v, up) {
    show(v.upload, !!up);
    if (!up) return;
    const state = String(up.state);
    v.upload.dataset.state = state;
    v.upState.textContent = state;
    v.upState.className = 'state upload-state up-state-' + state;
    v.upBar.max = Math.max(Number(up.bytes_total || 0), 1);
    v.upBar.value = state === 'confirmed' ? v.upBar.max : Number(up.bytes_sent || 0);
    v.upFiles.textContent = int(up.files_confirmed) + ' / ' + int(up.files_total);
    v.upBytes.textContent = bytes(up.bytes_sent) + ' / ' + bytes(up.bytes_total);
    v.upItems.textContent = int(up.items);
    v.upError.textContent = up.last_error ? String(up.last_error) : '';
    show(v.upError, !!up.last_error);
  }

  // ---- a job's failed images ---------------------------------------------

  function toggleFailures(v) {
    v.failOpen = !v.failOpen;
    v.failSeen = -1;
    update(v, v.job);
  }

  // One page of the job's failed images (the first, or `url`, the next
  // one the last page's Link named), appended when `more`.
  async function loadFailures(v, url, more) {
    const first = '/jobs/' + encodeURIComponent(v.id) + '/images?state=failed&limit=' + FAILURES_PAGE;
    try {
      const r = await api('GET', url || first);
      if (!r.ok || !Array.isArray(r.data)) throw new Error(errorText(r.status, r.data));
      const items = r.data.map(failureItem);
      if (more) v.failList.append(...items); else v.failList.replaceChildren(...items);
      v.failNext = r.next;
      v.failError.hidden = true;
    } catch (err) {
      if (err instanceof Unauthorized) { askForToken(true); return; }
      v.failError.textContent = err && err.message ? err.message : failureText(err);
      v.failError.hidden = false;
    }
    show(v.failMore, !!v.failNext);
    if (!v.failList.children.length && v.failError.hidden) {
      v.failList.append(el('li', 'muted small', 'No failed images.'));
    }
  }

  const FAIL_REASONS = { deleted: 'deleted on Mapillary', error: 'failed' };

  function failureItem(img) {
    const li = el('li', 'failure');
    li.dataset.imageId = String(img.image_id);
    li.dataset.reason = String(img.fail_reason || '');
    li.append(el('span', 'failure-id', String(img.image_id)));
    const facts = [FAIL_REASONS[img.fail_reason] || String(img.fail_reason || 'failed')];
    facts.push(int(img.attempts) + (img.attempts === 1 ? ' attempt' : ' attempts'));
    if (img.captured_at) facts.push('captured ' + day(img.captured_at));
    li.append(el('span', 'failure-facts muted small', facts.join(' · ')));
    if (img.last_error) li.append(el('span', 'failure-error', String(img.last_error)));
    return li;
  }

  function update(v, job) {
    v.job = job;
    const c = job.counts || {};
    const state = String(job.state);
    v.el.dataset.state = state;
    v.el.dataset.done = String(c.done || 0);
    v.el.dataset.discovered = String(c.discovered || 0);
    v.title.textContent = source(job);
    v.state.textContent = job.stalled_since && ACTIVE.includes(state) ? state + ', stalled' : state;
    v.state.className = 'state state-' + state + (job.stalled_since ? ' state-stalled' : '');
    v.sel.textContent = selection(job);

    if (c.discovered > 0) {
      v.bar.max = c.discovered;
      v.bar.value = c.done || 0;
    } else if (ACTIVE.includes(state)) {
      v.bar.removeAttribute('value'); // indeterminate while nothing is known
    } else {
      v.bar.max = 1;
      v.bar.value = state === 'done' ? 1 : 0;
    }
    const plus = job.enumeration_complete ? '' : '+';
    v.done.textContent = int(c.done) + ' / ' + int(c.discovered) + plus;
    v.failed.textContent = int(c.failed) + (c.deleted ? ' (' + int(c.deleted) + ' deleted)' : '');
    v.size.textContent = bytes(job.bytes_done);
    const r = v.rate;
    v.rateText.textContent = r ? perSecond(r.images, r.bytes) : '–';
    const left = (c.pending || 0) + (c.in_progress || 0);
    v.eta.textContent = !ACTIVE.includes(state) ? '–' : left === 0 && job.enumeration_complete ? '0 s'
      : r && r.images > 0 ? duration(left / r.images) + (job.enumeration_complete ? '' : '+') : '–';

    const msgs = [];
    if (state === 'paused' && job.pause_reason) msgs.push(['warn', PAUSE_REASONS[job.pause_reason] || 'Paused: ' + job.pause_reason]);
    if (job.stalled_since) msgs.push(['warn', 'No progress since ' + when(job.stalled_since) + '.']);
    if (job.last_error) msgs.push(['error', job.last_error]);
    if (job.note) msgs.push(['note', job.note]);
    if (state === 'done' && job.next_sync_at) msgs.push(['note', 'Next re-sync ' + when(job.next_sync_at) + '.']);
    v.msgs.replaceChildren(...msgs.map(([cls, text]) => el('p', 'msg ' + cls, text)));
    updateUpload(v, job.upload);

    const failedLeft = (c.failed || 0) - (c.deleted || 0);
    const can = {
      pause: ACTIVE.includes(state),
      resume: state === 'paused',
      retry: state !== 'cancelled' && (failedLeft > 0 || state === 'failed'),
      retryDeleted: state !== 'cancelled' && (c.deleted || 0) > 0,
      // A done job has nothing to stop unless a re-sync is scheduled.
      cancel: state !== 'cancelled' && (state !== 'done' || !!job.resync_every),
    };
    if (!can.cancel) v.confirming = false;
    show(v.pause, can.pause && !v.confirming);
    show(v.resume, can.resume && !v.confirming);
    show(v.retry, can.retry && !v.confirming);
    v.retry.textContent = failedLeft > 0 ? 'Retry ' + int(failedLeft) + ' failed' : 'Retry failed';
    show(v.retryDeleted, can.retryDeleted && !v.confirming);
    const failed = c.failed || 0;
    if (failed === 0) v.failOpen = false;
    show(v.failuresButton, failed > 0 && !v.confirming);
    v.failuresButton.textContent = v.failOpen ? 'Hide failures' : 'Show failures';
    v.failuresButton.setAttribute('aria-expanded', String(v.failOpen));
    show(v.failures, v.failOpen);
    // Read again when opened, and whenever the job's failures change.
    if (v.failOpen && v.failSeen !== failed) { v.failSeen = failed; loadFailures(v, null, false); }
    v.retryDeleted.textContent = 'Retry ' + int(c.deleted || 0) + ' deleted';
    show(v.cancel, can.cancel && !v.confirming);
    for (const b of [v.ask, v.confirm, v.keep]) show(b, v.confirming);
    show(v.actions, v.confirming || can.pause || can.resume || can.retry || can.retryDeleted || can.cancel || failed > 0);
    for (const b of [v.pause, v.resume, v.retry, v.retryDeleted, v.cancel, v.confirm, v.keep]) b.disabled = v.busy;
    v.failMore.disabled = v.busy;
  }

  // Images and bytes per second over the counts seen in the last half
  // minute; null until two readings a second apart exist.
  function jobRate(v, job) {
    if (!ACTIVE.includes(String(job.state))) { v.samples = []; return null; }
    const now = performance.now();
    const c = job.counts || {};
    const last = v.samples[v.samples.length - 1];
    if (last && (c.done < last.done || job.bytes_done < last.bytes)) v.samples = [];
    v.samples.push({ t: now, done: c.done || 0, bytes: job.bytes_done || 0 });
    while (v.samples.length > 2 && now - v.samples[1].t >= RATE_WINDOW_MS) v.samples.shift();
    const first = v.samples[0];
    const dt = (now - first.t) / 1000;
    if (dt < 1) return null;
    return { images: (c.done - first.done) / dt, bytes: (job.bytes_done - first.bytes) / dt };
  }

  async function act(v, method, suffix) {
    v.busy = true;
    v.error.hidden = true;
    update(v, v.job);
    try {
      const r = await api(method, '/jobs/' + encodeURIComponent(v.id) + suffix);
      if (!r.ok) {
        v.error.textContent = errorText(r.status, r.data);
        v.error.hidden = false;
      }
    } catch (err) {
      if (err instanceof Unauthorized) { askForToken(true); return; }
      v.error.textContent = failureText(err);
      v.error.hidden = false;
    } finally {
      v.busy = false;
    }
    if (v.job) update(v, v.job);
    poll();
  }

  // ---- adding a job -------------------------------------------------------

  const HINTS = {
    username: 'a Mapillary username',
    organization_id: 'an organization id (digits)',
    sequence_ids: 'sequence ids, separated by spaces or commas',
    image_ids: 'image ids, separated by spaces or commas',
  };

  $('f-source').addEventListener('change', () => { $('f-value').placeholder = HINTS[$('f-source').value] || ''; });

  const words = (text) => text.split(/[\s,]+/).filter((w) => w !== '');

  // The body exactly as typed: the API does every check and its message is
  // shown verbatim, so the form and the API can never disagree.
  function formBody() {
    const kind = $('f-source').value;
    const value = $('f-value').value.trim();
    const body = {};
    body[kind] = kind === 'sequence_ids' || kind === 'image_ids' ? words(value) : value;
    body.quality = $('f-quality').value;
    body.format = $('f-format').value;
    body.package = $('f-package').value;
    body.pano = $('f-pano').value;
    const bbox = $('f-bbox').value.trim();
    if (bbox) {
      body.bbox = words(bbox).map((w) => {
        const n = Number(w);
        return Number.isFinite(n) ? n : w;
      });
    }
    const start = $('f-start').value.trim();
    if (start) body.start_captured_at = start;
    const end = $('f-end').value.trim();
    if (end) body.end_captured_at = end;
    const resync = $('f-resync').value.trim();
    if (resync) body.resync_every = resync;
    return body;
  }

  $('add-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const error = $('add-error');
    const ok = $('add-ok');
    show(error, false);
    show(ok, false);
    $('f-submit').disabled = true;
    try {
      const r = await api('POST', '/jobs', formBody());
      if (r.ok && r.data) {
        ok.textContent = r.status === 201 ? 'Added job #' + r.data.id + '.'
          : 'The same selection is job #' + r.data.id + ' (' + r.data.state + ').';
        show(ok, true);
        $('f-value').value = '';
        poll();
      } else {
        error.textContent = errorText(r.status, r.data);
        show(error, true);
      }
    } catch (err) {
      if (err instanceof Unauthorized) { askForToken(true); return; }
      error.textContent = failureText(err);
      show(error, true);
    } finally {
      $('f-submit').disabled = false;
    }
  });

  poll();
})();

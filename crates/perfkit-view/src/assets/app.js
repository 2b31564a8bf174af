// perfkit view: draws the slices the server lays out (or the export embeds)
// on a canvas, and fills the tables. Every string from a profile goes into
// the page through textContent or canvas text, never as HTML.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const ROW = 18;
  const EMBED = (() => {
    const text = $("perfkit-data").textContent.trim();
    return text ? JSON.parse(text) : null;
  })();

  const S = {
    meta: null, funcs: null, view: 0, stats: {}, slice: null, index: null, focus: 0,
    mode: "icicle", q: "", match: null, depth: 60, minPct: 0, sortKey: "ct", sortDesc: true,
    filter: "", selected: -1, theme: "", drawn: [], geo: null, pending: 0,
  };
  // Timings the benchmark reads.
  const timing = (window.perfkitTiming = { lastDrawMs: 0, draws: 0 });

  function setState(state) { document.body.dataset.state = state; }
  function fail(err) {
    const box = $("error");
    box.hidden = false;
    box.textContent = "perfkit view: " + (err && err.message ? err.message : String(err));
    setState("error");
  }

  async function api(path, params) {
    if (EMBED) {
      const v = params && params.view ? Number(params.view) : 0;
      if (path === "meta") return EMBED.meta;
      if (path === "funcs") return EMBED.funcs;
      if (path === "diff") return EMBED.diff;
      if (path === "stats") return EMBED.stats[v];
      if (path === "edges") return embeddedEdges(v, Number(params.f));
      if (path === "slice") {
        if (!EMBED.slices[v]) throw new Error("this export holds no chart for view " + v);
        return EMBED.slices[v];
      }
      throw new Error("unknown data " + path);
    }
    const qs = params ? "?" + new URLSearchParams(params).toString() : "";
    const resp = await fetch("api/" + path + qs, { cache: "no-store" });
    let body;
    try { body = await resp.json(); } catch (e) { throw new Error("the server sent an unreadable answer for " + path); }
    if (!resp.ok) throw new Error((body && body.error) || "HTTP " + resp.status);
    return body;
  }

  // The export carries every edge; index them per function on first use.
  const edgeIndex = {};
  function embeddedEdges(v, f) {
    if (!edgeIndex[v]) {
      const e = EMBED.stats[v].edges, byCallee = new Map(), byCaller = new Map();
      for (let k = 0; k < e.caller.length; k++) {
        if (!byCallee.has(e.callee[k])) byCallee.set(e.callee[k], []);
        byCallee.get(e.callee[k]).push(k);
        if (!byCaller.has(e.caller[k])) byCaller.set(e.caller[k], []);
        byCaller.get(e.caller[k]).push(k);
      }
      edgeIndex[v] = { byCallee, byCaller, e };
    }
    const { byCallee, byCaller, e } = edgeIndex[v];
    const side = (ks, other) => {
      ks = (ks || []).slice().sort((a, b) => e.ct[b] - e.ct[a]);
      return { f: ks.map((k) => other[k]), nc: ks.map((k) => e.nc[k]), cc: ks.map((k) => e.cc[k]), tt: ks.map((k) => e.tt[k]), ct: ks.map((k) => e.ct[k]) };
    };
    return { callers: side(byCallee.get(f), e.caller), callees: side(byCaller.get(f), e.callee) };
  }

  // ---------- formatting ----------
  const f3 = (x) => (Math.round(x * 1000) / 1000).toFixed(3);
  // Python's format(x, ".4g"), as snakeviz shows times: a short profile's
  // rows read 1.234e-05, not pstats' 0.000.
  function g4(x) {
    if (x === 0) return "0";
    if (!isFinite(x)) return String(x);
    const [mant, exp] = x.toExponential(3).split("e");
    const e = parseInt(exp, 10);
    if (e < -4 || e >= 4) {
      return mant.replace(/\.?0+$/, "") + "e" + (e < 0 ? "-" : "+") + String(Math.abs(e)).padStart(2, "0");
    }
    return x.toFixed(3 - e).replace(/(\.\d*?)0+$/, "$1").replace(/\.$/, "");
  }
  function fmtNs(ns) {
    const s = ns / 1e9;
    if (s >= 1) return s.toFixed(3) + " s";
    if (s >= 1e-3) return (s * 1e3).toFixed(3) + " ms";
    return (s * 1e6).toFixed(1) + " µs";
  }
  const thousands = (n) => n.toLocaleString("en-US");
  const pct = (a, b) => (b > 0 ? ((100 * a) / b).toFixed(2) + "%" : "–");
  function label(f) { return f < 0 ? "(all)" : S.funcs.label[f]; }
  // pstats' func_std_string: file:line(name), or {name} for a <built-in>.
  function makeLabels(funcs) {
    const n = funcs.name.length, out = new Array(n);
    for (let f = 0; f < n; f++) {
      const name = funcs.name[f], file = funcs.file[f], line = funcs.line[f];
      if (file === "~" && line === 0) out[f] = name.length >= 2 && name[0] === "<" && name[name.length - 1] === ">" ? "{" + name.slice(1, -1) + "}" : name;
      else out[f] = file + ":" + line + "(" + name + ")";
    }
    funcs.label = out;
  }
  function shortName(f) { return f < 0 ? "all" : S.funcs.name[f]; }
  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }

  // ---------- URL hash (view state) ----------
  // What the hash holds, as a page opened without one has it.
  const HASH_DEFAULTS = {
    view: 0, focus: 0, mode: "icicle", q: "", depth: 60, minPct: 0, sortKey: "ct", sortDesc: true,
    filter: "", selected: -1, theme: "",
  };
  const SORT_KEYS = ["nc", "tt", "tpc", "ct", "cpc", "name"];
  // The whole state from the hash: what it leaves out is the default, so a
  // link followed in an open tab shows what it shows in a new one.
  function readHash() {
    Object.assign(S, HASH_DEFAULTS);
    const h = new URLSearchParams(location.hash.slice(1));
    if (h.has("view")) S.view = Math.max(0, parseInt(h.get("view"), 10) || 0);
    if (h.has("focus")) S.focus = Math.max(0, parseInt(h.get("focus"), 10) || 0);
    if (h.get("mode") === "sunburst") S.mode = "sunburst";
    if (h.has("q")) S.q = h.get("q");
    if (h.has("depth")) S.depth = clampInt(h.get("depth"), 1, 2000, 60);
    if (h.has("min")) S.minPct = Math.min(50, Math.max(0, parseFloat(h.get("min")) || 0));
    if (SORT_KEYS.includes(h.get("sort"))) S.sortKey = h.get("sort");
    if (h.has("desc")) S.sortDesc = h.get("desc") !== "0";
    if (h.has("filter")) S.filter = h.get("filter");
    if (h.has("sel")) S.selected = clampInt(h.get("sel"), -1, Number.MAX_SAFE_INTEGER, -1);
    if (h.get("theme") === "dark" || h.get("theme") === "light") S.theme = h.get("theme");
  }
  function clampInt(v, lo, hi, dflt) {
    const n = parseInt(v, 10);
    return Number.isFinite(n) ? Math.min(hi, Math.max(lo, n)) : dflt;
  }
  function writeHash() {
    const h = new URLSearchParams();
    h.set("view", S.view); h.set("focus", S.focus); h.set("mode", S.mode);
    if (S.q) h.set("q", S.q);
    h.set("depth", S.depth);
    if (S.minPct) h.set("min", S.minPct);
    h.set("sort", S.sortKey); h.set("desc", S.sortDesc ? "1" : "0");
    if (S.filter) h.set("filter", S.filter);
    if (S.selected >= 0) h.set("sel", S.selected);
    if (S.theme) h.set("theme", S.theme);
    const next = "#" + h.toString();
    if (next !== location.hash) replaceHash(next);
  }
  // On the document's own address: a bare "#..." resolves against the base
  // URL, which for a page inlined in a notebook (<iframe srcdoc>, address
  // about:srcdoc) is the notebook's, and rewriting to it is refused.
  function replaceHash(hash) {
    try {
      history.replaceState(null, "", location.href.split("#")[0] + hash);
    } catch (e) {
      // (a sandboxed frame may refuse even that: the view then has no link, and still works)
      if (e.name !== "SecurityError") throw e;
    }
  }

  // ---------- slices ----------
  function useSlice(slice) {
    S.slice = slice;
    const index = new Map();
    for (let i = 0; i < slice.id.length; i++) index.set(slice.id[i], i);
    S.index = index;
  }
  function sliceParams(root) {
    const box = $("chart-box");
    const width = Math.max(300, box.clientWidth || 1000);
    // Level of detail: nothing narrower than ~0.4 px of the chart comes over.
    const min = Math.max(S.minPct / 100, 0.4 / width);
    return { view: S.view, root: root, depth: S.depth + 1, min: min };
  }
  // Every slice asked for gets a number: an answer is used only if no other
  // slice was asked for since (a later zoom, a thread switch, a new depth)
  // and its view is still the one shown; null otherwise. A zoom's answer
  // that came after a thread switch replaced the new thread's slice.
  let sliceSeq = 0;
  async function fetchSlice(root) {
    const seq = ++sliceSeq, view = S.view;
    const slice = await api("slice", sliceParams(root));
    return seq === sliceSeq && view === S.view ? slice : null;
  }
  // The slice of frame `root`, or of the view's root if there is no such frame.
  async function fetchFocus(root) {
    try { return await fetchSlice(root); } catch (e) { if (root === 0) throw e; }
    return fetchSlice(0);
  }
  // End (exclusive) of the subtree of slice index i: preorder keeps it contiguous.
  function subtreeEnd(i) {
    const d = S.slice.d, n = d.length, di = d[i];
    let j = i + 1;
    while (j < n && d[j] > di) j++;
    return j;
  }

  // ---------- colours ----------
  function hueOf(f) {
    const name = f < 0 ? "" : S.funcs.file[f] + S.funcs.name[f];
    let h = 2166136261;
    for (let i = 0; i < name.length; i++) { h ^= name.charCodeAt(i); h = Math.imul(h, 16777619); }
    return (h >>> 0);
  }
  function frameColor(i) {
    const s = S.slice, f = s.f[i];
    const dark = document.documentElement.dataset.theme === "dark";
    if (S.match && f >= 0 && S.match[f]) return dark ? "#e040fb" : "#d500f9";
    if (s.btotal) {
      const a = s.total[i], b = s.btotal[i], m = Math.max(a, b);
      const r = m > 0 ? (a - b) / m : 0; // -1 .. 1
      const k = Math.min(1, Math.abs(r));
      if (r > 0) return `rgb(${Math.round(225 + 30 * k)},${Math.round(220 - 170 * k)},${Math.round(220 - 170 * k)})`;
      return `rgb(${Math.round(220 - 170 * k)},${Math.round(220 - 120 * k)},${Math.round(225 + 30 * k)})`;
    }
    const h = hueOf(f);
    const hue = 10 + (h % 45), light = 55 + ((h >>> 8) % 15);
    if (S.match) return dark ? `hsl(${hue},15%,30%)` : `hsl(${hue},15%,80%)`;
    return dark ? `hsl(${hue},60%,${light - 18}%)` : `hsl(${hue},85%,${light}%)`;
  }

  // ---------- drawing ----------
  function draw() {
    const t0 = performance.now();
    // (Until a thread switch's slice is in, the old one is left as drawn.)
    if (!S.slice || S.slice.view !== S.view) return false;
    const fi = S.index.get(S.focus);
    if (fi === undefined) return false;
    const notes = [];
    if (S.mode === "sunburst") drawSunburst(fi, notes); else drawIcicle(fi, notes);
    // A lone bar said nothing of why (a profile whose every time is 0).
    if (!(S.slice.total[fi] > 0)) {
      notes.push(S.focus === 0 ? "this profile records no time, so the chart has nothing to draw: the table lists its functions"
        : "this frame records no time, so nothing below it is drawn");
    }
    drawCrumbs(fi);
    const note = $("chart-note");
    note.textContent = notes.join(" · ");
    note.hidden = !notes.length;
    timing.lastDrawMs = performance.now() - t0;
    timing.draws++;
    return true;
  }
  // The largest canvas every browser draws: 32,767 device pixels a side
  // (Firefox's limit; Chromium drew nothing at 72,000, depth 2000 on a 2x
  // display, and the page said "ready"), and an area of 64 Mi pixels
  // (256 MiB; a quarter of Chromium's limit), which 2,000 device pixels
  // wide is the full 32,767.
  const CANVAS_MAX_SIDE = 32767, CANVAS_MAX_AREA = 1 << 26;
  // How many icicle rows a canvas `width` CSS pixels wide can hold.
  function rowsThatFit(width) {
    const ratio = window.devicePixelRatio || 1, deviceWidth = Math.max(1, Math.round(width * ratio));
    const height = Math.min(CANVAS_MAX_SIDE, Math.floor(CANVAS_MAX_AREA / deviceWidth));
    return Math.max(1, Math.floor(height / (ROW * ratio)));
  }
  function prepareCanvas(width, height) {
    const c = $("chart"), ratio = window.devicePixelRatio || 1;
    c.width = Math.round(width * ratio); c.height = Math.round(height * ratio);
    c.style.width = width + "px"; c.style.height = height + "px";
    const ctx = c.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    return ctx;
  }
  const SUNBURST_RINGS = 16;
  // A note when the slice stops short of the depth asked for: the server
  // sends a bounded number of frames, leaving the deepest levels out (an
  // export holds what fitted), and said so in `truncated`, which the page
  // never showed (57 levels drawn, the depth box saying 60). `levels` is
  // how many levels below the focus at slice depth `fd` came over.
  function cutNote(fd, levels, wanted, notes) {
    const s = S.slice;
    if (!s.truncated || fd + levels - 1 < s.depth || levels >= wanted) return;
    notes.push("showing " + levels + " of the " + wanted + " levels asked for: " +
      (EMBED ? "this export holds no deeper ones here (too many frames) — perfkit view shows them"
        : "the deeper ones are too many frames to send at once — zoom in to see them"));
  }
  function drawIcicle(fi, notes) {
    const s = S.slice, end = subtreeEnd(fi), fx = s.x[fi], fw = s.w[fi] || 1, fd = s.d[fi];
    const W = Math.max(300, $("chart-box").clientWidth - 2);
    let rows = 1;
    for (let i = fi; i < end; i++) if (s.d[i] - fd + 1 > rows) rows = s.d[i] - fd + 1;
    cutNote(fd, rows, S.depth, notes);
    rows = Math.min(rows, S.depth);
    const fit = rowsThatFit(W);
    if (rows > fit) {
      notes.push("showing " + fit + " of " + rows + " levels (the most a canvas holds) — zoom in to see deeper");
      rows = fit;
    }
    const ctx = prepareCanvas(W, rows * ROW);
    ctx.font = "12px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    const minFrac = S.minPct / 100, drawn = [];
    const textColor = document.documentElement.dataset.theme === "dark" ? "#f2f2f2" : "#111";
    for (let i = fi; i < end; i++) {
      const rel = s.d[i] - fd;
      if (rel >= rows) continue;
      const wf = s.w[i] / fw;
      if (wf < minFrac && i !== fi) continue;
      const px = ((s.x[i] - fx) / fw) * W, pw = wf * W;
      if (pw < 0.3) continue;
      const y = rel * ROW;
      ctx.fillStyle = frameColor(i);
      ctx.fillRect(px, y, Math.max(pw - 0.5, 0.3), ROW - 1);
      if (S.selected >= 0 && s.f[i] === S.selected) {
        ctx.strokeStyle = textColor; ctx.lineWidth = 2;
        ctx.strokeRect(px + 1, y + 1, Math.max(pw - 2.5, 0.3), ROW - 3);
      }
      if (pw > 36) {
        ctx.fillStyle = textColor;
        const name = s.f[i] < 0 ? "all" : S.funcs.name[s.f[i]];
        const fit = Math.floor((pw - 6) / 6.6);
        ctx.fillText(name.length > fit ? name.slice(0, Math.max(fit - 1, 1)) + "…" : name, px + 3, y + ROW / 2);
      }
      drawn.push(i, px, pw, rel);
    }
    S.drawn = drawn;
    S.geo = { kind: "icicle", W: W };
  }
  function drawSunburst(fi, notes) {
    const s = S.slice, end = subtreeEnd(fi), fx = s.x[fi], fw = s.w[fi] || 1, fd = s.d[fi];
    const W = Math.max(300, $("chart-box").clientWidth - 2);
    const size = Math.min(W, 760), cx = W / 2, cy = size / 2;
    let rings = 1;
    for (let i = fi; i < end; i++) if (s.d[i] - fd + 1 > rings) rings = s.d[i] - fd + 1;
    cutNote(fd, rings, Math.min(S.depth, SUNBURST_RINGS), notes);
    if (rings > SUNBURST_RINGS && S.depth > SUNBURST_RINGS) {
      notes.push("the sunburst shows " + SUNBURST_RINGS + " of " + Math.min(rings, S.depth) + " levels — zoom in or switch to Icicle to see deeper");
    }
    rings = Math.min(rings, S.depth, SUNBURST_RINGS);
    const ringW = (size / 2 - 4) / rings;
    const ctx = prepareCanvas(W, size);
    const minFrac = S.minPct / 100, drawn = [], TAU = Math.PI * 2;
    const line = document.documentElement.dataset.theme === "dark" ? "#1b1b1b" : "#fff";
    for (let i = fi; i < end; i++) {
      const rel = s.d[i] - fd;
      if (rel >= rings) continue;
      const wf = s.w[i] / fw;
      if (wf < minFrac && i !== fi) continue;
      const r0 = rel * ringW, r1 = r0 + ringW;
      if (wf * TAU * r1 < 0.4) continue;
      const a0 = ((s.x[i] - fx) / fw) * TAU - Math.PI / 2, a1 = a0 + wf * TAU;
      ctx.beginPath();
      if (rel === 0) ctx.arc(cx, cy, r1, 0, TAU);
      else { ctx.arc(cx, cy, r1, a0, a1); ctx.arc(cx, cy, r0, a1, a0, true); ctx.closePath(); }
      ctx.fillStyle = frameColor(i);
      ctx.fill();
      ctx.strokeStyle = (S.selected >= 0 && s.f[i] === S.selected) ? "#000" : line;
      ctx.lineWidth = (S.selected >= 0 && s.f[i] === S.selected) ? 2 : 0.5;
      ctx.stroke();
      drawn.push(i, a0, a1, rel);
    }
    const fname = shortName(s.f[fi]);
    ctx.fillStyle = document.documentElement.dataset.theme === "dark" ? "#f2f2f2" : "#111";
    ctx.font = "12px system-ui, sans-serif"; ctx.textAlign = "center"; ctx.textBaseline = "middle";
    const fit = Math.floor((ringW * 2 - 8) / 6.6);
    ctx.fillText(fname.length > fit ? fname.slice(0, Math.max(fit - 1, 1)) + "…" : fname, cx, cy);
    S.drawn = drawn;
    S.geo = { kind: "sunburst", cx: cx, cy: cy, ringW: ringW };
  }
  function hit(ev) {
    const c = $("chart"), r = c.getBoundingClientRect();
    const mx = ev.clientX - r.left, my = ev.clientY - r.top, d = S.drawn, g = S.geo;
    if (!g) return -1;
    if (g.kind === "icicle") {
      const row = Math.floor(my / ROW);
      for (let k = 0; k < d.length; k += 4) if (d[k + 3] === row && mx >= d[k + 1] && mx < d[k + 1] + Math.max(d[k + 2], 1)) return d[k];
      return -1;
    }
    const dx = mx - g.cx, dy = my - g.cy, rad = Math.sqrt(dx * dx + dy * dy), ring = Math.floor(rad / g.ringW);
    let ang = Math.atan2(dy, dx);
    if (ang < -Math.PI / 2) ang += Math.PI * 2;
    for (let k = 0; k < d.length; k += 4) {
      if (d[k + 3] !== ring) continue;
      if (ring === 0 || (ang >= d[k + 1] && ang < d[k + 2])) return d[k];
    }
    return -1;
  }
  // Levels a long breadcrumb path shows before and after its "…" ("all" aside).
  const CRUMBS_HEAD = 3, CRUMBS_TAIL = 8;
  function drawCrumbs(fi) {
    const s = S.slice, nav = $("crumbs");
    nav.replaceChildren();
    const chain = [];
    for (let i = fi; i >= 0; i = s.p[i]) chain.push([s.id[i], s.f[i]]);
    // Above the slice's root: the path the server sent.
    const above = [];
    for (let k = 0; k < s.path.length; k++) if (s.path[k] !== s.id[0]) above.push([s.path[k], s.path_funcs[k]]);
    const crumbs = [[0, -1]].concat(above, chain.reverse()).filter((c, k, all) => k === 0 || c[0] !== 0);
    // A deep path shows its first and last levels around a "…" that tells
    // how many are left out and goes to the middle one: a crumb per level
    // was 50,000 buttons (1.4 s a redraw) in a deep recursion.
    const last = crumbs.length - 1, cut = crumbs.length > 2 + CRUMBS_HEAD + CRUMBS_TAIL;
    const hidden = cut ? crumbs.slice(1 + CRUMBS_HEAD, crumbs.length - CRUMBS_TAIL) : [];
    const crumb = (c, k) => {
      if (k > 0) nav.appendChild(el("span", " › ", "sep"));
      const b = el("button", c[1] < 0 ? "all" : shortName(c[1]), "crumb");
      b.title = label(c[1]);
      b.dataset.node = c[0];
      if (k === last) b.classList.add("here");
      b.addEventListener("click", () => zoom(c[0]));
      nav.appendChild(b);
    };
    if (!cut) { crumbs.forEach(crumb); return; }
    for (let k = 0; k <= CRUMBS_HEAD; k++) crumb(crumbs[k], k);
    const middle = hidden[Math.floor(hidden.length / 2)];
    nav.appendChild(el("span", " › ", "sep"));
    const gap = el("button", "…", "crumb-gap");
    gap.title = hidden.length.toLocaleString("en-US") + " levels not shown: click to go to the middle one, " + label(middle[1]);
    gap.dataset.hidden = hidden.length;
    gap.dataset.node = middle[0];
    gap.addEventListener("click", () => zoom(middle[0]));
    nav.appendChild(gap);
    for (let k = crumbs.length - CRUMBS_TAIL; k <= last; k++) crumb(crumbs[k], k);
  }

  // ---------- zoom ----------
  async function zoom(id) {
    // A frame of another view's slice (clicked while a thread switch loads)
    // is no frame of this view.
    if (!S.slice || S.slice.view !== S.view) return;
    S.focus = id;
    writeHash();
    const drewNow = S.index.has(id) && draw();
    // The server lays the new root out afresh, with detail the old slice culled.
    if (!EMBED && S.slice.id[0] !== id) {
      S.pending++;
      try {
        const slice = await fetchSlice(id);
        if (!slice) return;
        useSlice(slice);
        draw();
      } catch (e) {
        if (!drewNow) fail(e);
      } finally {
        S.pending--;
      }
    } else if (!drewNow) {
      S.focus = S.slice.id[0];
      draw();
    }
  }
  // Fetches the focus's slice again (a new depth or minimum size), or the
  // view's root's if the focus is no frame of the view.
  async function redrawWithDetail() {
    S.pending++;
    try {
      if (!EMBED) {
        const slice = await fetchFocus(S.focus);
        if (!slice) return;
        useSlice(slice);
      }
      if (!S.index.has(S.focus)) S.focus = S.slice.id[0];
      draw();
    } finally {
      S.pending--;
    }
  }

  // ---------- tooltip ----------
  function showTip(ev, i) {
    const tip = $("tip");
    if (i < 0) { tip.hidden = true; return; }
    const s = S.slice, f = s.f[i], rootTotal = S.meta.views[S.view].total_ns;
    // The slice's root has its parent outside the slice: the server sends
    // that total (none for the view's root, which has no parent).
    const parentTotal = s.p[i] >= 0 ? s.total[s.p[i]] : s.parent_total;
    tip.replaceChildren();
    tip.appendChild(el("div", label(f), "mono strong"));
    const lines = [
      ["calls", String(s.calls[i])],
      ["own time", fmtNs(s.own[i])],
      ["total time", fmtNs(s.total[i])],
      ["% of root", pct(s.total[i], rootTotal)],
      ["% of parent", parentTotal == null ? "–" : pct(s.total[i], parentTotal)],
    ];
    if (s.btotal) {
      lines.push(["before (total)", fmtNs(s.btotal[i])]);
      const delta = s.total[i] - s.btotal[i];
      lines.push(["change", (delta >= 0 ? "+" : "−") + fmtNs(Math.abs(delta)) + (s.btotal[i] > 0 ? " (" + (delta >= 0 ? "+" : "") + ((100 * delta) / s.btotal[i]).toFixed(1) + "%)" : " (new)")]);
    }
    const t = el("table");
    for (const [k, v] of lines) { const tr = el("tr"); tr.appendChild(el("th", k)); tr.appendChild(el("td", v)); t.appendChild(tr); }
    tip.appendChild(t);
    tip.hidden = false;
    // Fixed to the viewport, so it never widens the scrolling chart box.
    let left = ev.clientX + 14, top = ev.clientY + 14;
    if (left + 360 > window.innerWidth) left = Math.max(0, ev.clientX - 374);
    if (top + tip.offsetHeight > window.innerHeight) top = Math.max(0, ev.clientY - tip.offsetHeight - 10);
    tip.style.left = left + "px"; tip.style.top = top + "px";
  }

  // ---------- search ----------
  function compileQuery(q) {
    if (!q) return null;
    try { return new RegExp(q, "i"); } catch (e) {
      const lower = q.toLowerCase();
      return { test: (s) => s.toLowerCase().includes(lower) };
    }
  }
  function applySearch() {
    const re = compileQuery(S.q);
    if (!re) { S.match = null; $("search-count").textContent = ""; return; }
    const n = S.funcs.label.length, m = new Uint8Array(n);
    let count = 0;
    for (let f = 0; f < n; f++) if (re.test(S.funcs.label[f])) { m[f] = 1; count++; }
    S.match = m;
    $("search-count").textContent = count + (count === 1 ? " function matches" : " functions match");
  }

  // ---------- stats table ----------
  async function ensureStats(view) {
    if (!S.stats[view]) {
      const st = await api("stats", { view: view });
      const n = st.rows.f.length, tpc = new Float64Array(n), cpc = new Float64Array(n);
      for (let r = 0; r < n; r++) {
        tpc[r] = st.rows.nc[r] ? st.rows.tt[r] / st.rows.nc[r] : 0;
        cpc[r] = st.rows.cc[r] ? st.rows.ct[r] / st.rows.cc[r] : 0;
      }
      st.rows.tpc = tpc; st.rows.cpc = cpc;
      st.rowOf = new Map();
      for (let r = 0; r < n; r++) if (!st.rowOf.has(st.rows.f[r])) st.rowOf.set(st.rows.f[r], r);
      S.stats[view] = st;
    }
    return S.stats[view];
  }
  // Every row of the table can be scrolled to, but only a window of
  // TABLE_WINDOW of them is in the page at a time, between two empty rows
  // as tall as the rows they stand for, and the window moves as the table
  // scrolls: 100,000 rows in the page took 12 s to lay out (the table used
  // to stop at 400, "showing 400 of N", with no way to see the others).
  // Rows are one line each (long labels are cut at the start), so all
  // are as tall as the first one measured.
  const TABLE_WINDOW = 400;
  let tableOrder = [], tableFirst = 0, tableRowH = 0;
  function ncallsText(nc, cc) { return nc !== cc ? nc + "/" + cc : String(nc); }
  function renderTable() {
    const st = S.stats[S.view];
    if (!st) return; // (a thread switch's table is on its way)
    const rows = st.rows, n = rows.f.length;
    const re = compileQuery(S.filter);
    let order = [];
    for (let r = 0; r < n; r++) if (!re || re.test(label(rows.f[r]))) order.push(r);
    const key = S.sortKey, sign = S.sortDesc ? -1 : 1;
    if (key === "name") order.sort((a, b) => sign * (label(rows.f[a]) < label(rows.f[b]) ? -1 : label(rows.f[a]) > label(rows.f[b]) ? 1 : 0));
    else { const col = rows[key] || rows.ct; order.sort((a, b) => sign * (col[a] - col[b]) || a - b); }
    tableOrder = order;
    $("table-scroll").scrollTop = 0;
    renderTableRows(0);
    $("table-count").textContent = thousands(order.length) + (order.length === 1 ? " function" : " functions") + " · " +
      st.total_calls + " function calls (" + st.primitive_calls + " primitive calls) in " + f3(st.total_tt) + " seconds";
    for (const th of document.querySelectorAll("#stats th")) {
      th.classList.toggle("sorted", th.dataset.key === key);
      th.classList.toggle("asc", th.dataset.key === key && !S.sortDesc);
    }
  }
  // Puts rows first .. first + TABLE_WINDOW of the order in the page.
  function renderTableRows(first) {
    const st = S.stats[S.view], rows = st.rows, order = tableOrder, n = order.length;
    first = Math.max(0, Math.min(first, n - TABLE_WINDOW));
    const end = Math.min(n, first + TABLE_WINDOW), body = document.createElement("tbody");
    const spacer = (count) => {
      const tr = el("tr", undefined, "spacer"), td = el("td");
      td.colSpan = 6;
      td.style.height = count * tableRowH + "px";
      tr.appendChild(td);
      return tr;
    };
    if (first > 0) body.appendChild(spacer(first));
    for (let k = first; k < end; k++) {
      const r = order[k], f = rows.f[r], tr = document.createElement("tr");
      tr.dataset.func = f;
      if (f === S.selected) tr.className = "selected";
      tr.appendChild(el("td", ncallsText(rows.nc[r], rows.cc[r]), "num"));
      tr.appendChild(el("td", g4(rows.tt[r]), "num"));
      tr.appendChild(el("td", rows.nc[r] ? g4(rows.tpc[r]) : "", "num"));
      tr.appendChild(el("td", g4(rows.ct[r]), "num"));
      tr.appendChild(el("td", rows.cc[r] ? g4(rows.cpc[r]) : "", "num"));
      // (An isolated left-to-right run, so that cut at the start it reads the same.)
      const name = el("td", undefined, "mono name");
      name.appendChild(el("bdi", label(f)));
      name.title = label(f);
      tr.appendChild(name);
      body.appendChild(tr);
    }
    if (end < n) body.appendChild(spacer(n - end));
    $("stats").replaceChild(body, $("stats").tBodies[0]);
    tableFirst = first;
    if (!tableRowH && end > first && n > TABLE_WINDOW) {
      const a = body.rows[first > 0 ? 1 : 0].getBoundingClientRect(), b = body.rows[end - first - (first > 0 ? 0 : 1)].getBoundingClientRect();
      tableRowH = (b.bottom - a.top) / (end - first);
      if (tableRowH > 0) renderTableRows(first);
    }
  }
  // Moves the window when the rows in sight come near one of its ends.
  function scrollTable() {
    const n = tableOrder.length;
    if (n <= TABLE_WINDOW || !tableRowH) return;
    const box = $("table-scroll"), head = $("stats").tHead.offsetHeight;
    const top = Math.max(0, box.scrollTop - head) / tableRowH, seen = box.clientHeight / tableRowH;
    const margin = TABLE_WINDOW / 4;
    if ((top < tableFirst + margin && tableFirst > 0) || (top + seen > tableFirst + TABLE_WINDOW - margin && tableFirst + TABLE_WINDOW < n)) {
      renderTableRows(Math.floor(top + seen / 2 - TABLE_WINDOW / 2));
    }
  }

  // ---------- selection: callers / callees ----------
  const EDGE_ROWS = 200, EDGE_STEP = 1000;
  // Appends rows 0..first of n to tbody, then a row saying how many there
  // are, with a button for `step` more: the callers/callees panels stopped
  // at 200 rows and the diff tables at 25 without a word.
  function pagedRows(tbody, n, first, step, colSpan, rowAt, from = 0) {
    const to = Math.min(n, from + (from ? step : first));
    for (let k = from; k < to; k++) tbody.appendChild(rowAt(k));
    if (to >= n) return;
    const tr = el("tr", undefined, "more"), td = el("td", "showing " + thousands(to) + " of " + thousands(n) + " ");
    td.colSpan = colSpan;
    const next = Math.min(step, n - to);
    const b = el("button", next === n - to ? "show the other " + thousands(next) : "show " + thousands(next) + " more");
    b.addEventListener("click", () => { tr.remove(); pagedRows(tbody, n, first, step, colSpan, rowAt, to); });
    td.appendChild(b); tr.appendChild(td); tbody.appendChild(tr);
  }
  let selectSeq = 0;
  function select(f, redraw) {
    // (a link's sel= from another profile: no function of this one, none selected)
    if (!(f < S.funcs.name.length)) f = -1;
    S.selected = f;
    writeHash();
    const st = S.stats[S.view];
    $("sel-name").textContent = f >= 0 ? label(f) : "(click a frame or a table row)";
    const info = $("sel-info");
    info.replaceChildren();
    if (f >= 0 && st && st.rowOf.has(f)) {
      const r = st.rowOf.get(f), rows = st.rows;
      info.textContent = "ncalls " + ncallsText(rows.nc[r], rows.cc[r]) + " · tottime " + g4(rows.tt[r]) + " s · cumtime " + g4(rows.ct[r]) + " s";
    }
    for (const tr of $("stats").tBodies[0].rows) tr.classList.toggle("selected", Number(tr.dataset.func) === f);
    if (redraw !== false && S.slice) draw();
    const seq = ++selectSeq;
    const edgeRow = (side) => (k) => {
      const other = side.f[k], tr = document.createElement("tr");
      tr.dataset.func = other;
      tr.appendChild(el("td", ncallsText(side.nc[k], side.cc[k]), "num"));
      tr.appendChild(el("td", g4(side.tt[k]), "num"));
      tr.appendChild(el("td", g4(side.ct[k]), "num"));
      tr.appendChild(el("td", label(other), "mono link"));
      tr.addEventListener("click", () => select(other));
      return tr;
    };
    const fill = (id, side) => {
      const tbody = document.createElement("tbody");
      if (side && side.f.length) pagedRows(tbody, side.f.length, EDGE_ROWS, EDGE_STEP, 4, edgeRow(side));
      else if (side) { const tr = el("tr"); tr.appendChild(el("td", "(none)")); tbody.appendChild(tr); }
      $(id).replaceChild(tbody, $(id).tBodies[0]);
    };
    if (f < 0) { fill("callers", null); fill("callees", null); return Promise.resolve(); }
    S.pending++;
    const view = S.view;
    return api("edges", { view: view, f: f })
      .then((edges) => { if (seq === selectSeq && view === S.view) { fill("callers", edges.callers); fill("callees", edges.callees); } })
      .catch(fail)
      .finally(() => { S.pending--; });
  }

  // ---------- diff tables ----------
  const DIFF_ROWS = 25, DIFF_STEP = 100;
  function renderDiff(diff) {
    $("diff-box").hidden = false;
    // Which run is which: the stats table and the chart show one of the two.
    const files = S.meta.files;
    $("diff-note").textContent = "Δ = after − before, in ms. The chart, the table below and the callers/callees are the after run's (" + files[files.length - 1] + "); the before run is " + files[0] + ".";
    const n = diff.f.length;
    // As the main table's times (4 significant digits): a change under
    // 0.5 µs read +0.000 in fixed milliseconds.
    const ms = (x) => g4(x * 1e3);
    const fill = (id, rows) => {
      const tbody = document.createElement("tbody");
      const rowAt = (k) => {
        const r = rows[k], tr = document.createElement("tr");
        const dtt = diff.after_tt[r] - diff.before_tt[r], dct = diff.after_ct[r] - diff.before_ct[r];
        tr.dataset.func = diff.f[r];
        tr.appendChild(el("td", (dtt >= 0 ? "+" : "−") + ms(Math.abs(dtt)), "num " + (dtt > 0 ? "worse" : "better")));
        tr.appendChild(el("td", ms(diff.before_tt[r]), "num"));
        tr.appendChild(el("td", ms(diff.after_tt[r]), "num"));
        tr.appendChild(el("td", (dct >= 0 ? "+" : "−") + ms(Math.abs(dct)), "num"));
        tr.appendChild(el("td", label(diff.f[r]), "mono link"));
        tr.addEventListener("click", () => select(diff.f[r]));
        return tr;
      };
      if (rows.length) pagedRows(tbody, rows.length, DIFF_ROWS, DIFF_STEP, 5, rowAt);
      else { const tr = el("tr"); tr.appendChild(el("td", "(none)")); tbody.appendChild(tr); }
      $(id).replaceChild(tbody, $(id).tBodies[0]);
    };
    // Rows come regressions first (largest Δ tottime first), so the
    // improvements are read from the end.
    const worse = [], better = [];
    for (let r = 0; r < n; r++) if (diff.after_tt[r] - diff.before_tt[r] > 0) worse.push(r);
    for (let r = n - 1; r >= 0; r--) if (diff.after_tt[r] - diff.before_tt[r] < 0) better.push(r);
    fill("regressions", worse);
    fill("improvements", better);
  }

  // ---------- wiring ----------
  function applyTheme() {
    const dark = S.theme ? S.theme === "dark" : window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
    document.documentElement.dataset.theme = dark ? "dark" : "light";
  }
  function setMode(mode) {
    S.mode = mode;
    $("mode-icicle").classList.toggle("on", mode === "icicle");
    $("mode-sunburst").classList.toggle("on", mode === "sunburst");
    writeHash();
    draw();
  }
  function wire() {
    const chart = $("chart");
    chart.addEventListener("mousemove", (ev) => showTip(ev, hit(ev)));
    chart.addEventListener("mouseleave", () => { $("tip").hidden = true; });
    chart.addEventListener("click", (ev) => {
      const i = hit(ev);
      if (i < 0 || S.slice.view !== S.view) return;
      const s = S.slice, id = s.id[i], f = s.f[i];
      // The zoom draws (with the selection outlined); the panel fills after.
      if (f >= 0) S.selected = f;
      // Clicking the frame already in focus goes one level up.
      if (id === S.focus) { const p = s.p[i]; zoom(p >= 0 ? s.id[p] : (s.path.length > 1 ? s.path[s.path.length - 2] : 0)); }
      else zoom(id);
      if (f >= 0) select(f, false);
    });
    $("mode-icicle").addEventListener("click", () => setMode("icicle"));
    $("mode-sunburst").addEventListener("click", () => setMode("sunburst"));
    $("search").addEventListener("input", () => {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(() => { S.q = $("search").value; applySearch(); writeHash(); draw(); }, 80);
    });
    $("filter").addEventListener("input", () => {
      clearTimeout(filterTimer);
      filterTimer = setTimeout(() => { S.filter = $("filter").value; writeHash(); renderTable(); }, 80);
    });
    $("depth").addEventListener("change", () => { S.depth = clampInt($("depth").value, 1, 2000, 60); writeHash(); redrawWithDetail().catch(fail); });
    // The slice came over without frames narrower than the minimum then: fetch it again.
    $("minsize").addEventListener("change", () => { S.minPct = Math.min(50, Math.max(0, parseFloat($("minsize").value) || 0)); writeHash(); redrawWithDetail().catch(fail); });
    $("theme").addEventListener("click", () => {
      S.theme = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
      applyTheme(); writeHash(); draw();
    });
    for (const th of document.querySelectorAll("#stats th")) {
      th.addEventListener("click", () => {
        const key = th.dataset.key;
        if (S.sortKey === key) S.sortDesc = !S.sortDesc;
        else { S.sortKey = key; S.sortDesc = key !== "name"; }
        writeHash(); renderTable();
      });
    }
    $("table-scroll").addEventListener("scroll", scrollTable, { passive: true });
    $("stats").addEventListener("click", (ev) => {
      const tr = ev.target.closest("tr");
      if (tr && tr.dataset.func !== undefined) select(Number(tr.dataset.func));
    });
    // The selected function is the same one in every thread: it stays selected
    // (its callers and callees then this thread's); the zoom is of the old tree.
    $("thread").addEventListener("change", () => switchView(Number($("thread").value), 0, S.selected).catch(fail));
    // Escape zooms out one level, as a click on the top frame does.
    document.addEventListener("keydown", (ev) => {
      if (ev.key !== "Escape" || !S.slice || ev.target.tagName === "INPUT") return;
      const i = S.index.get(S.focus);
      if (i === undefined || S.focus === 0) return;
      const p = S.slice.p[i], path = S.slice.path;
      zoom(p >= 0 ? S.slice.id[p] : path.length > 1 ? path[path.length - 2] : 0);
    });
    let resizeTimer = 0;
    window.addEventListener("resize", () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(draw, 100); });
  }
  // Typing in the search or filter box applies after a pause.
  let searchTimer = 0, filterTimer = 0;
  // The controls as S has them (on opening, and when a link is followed).
  function showState() {
    clearTimeout(searchTimer); clearTimeout(filterTimer);
    $("thread").value = S.view;
    $("search").value = S.q; $("filter").value = S.filter;
    $("depth").value = S.depth; $("minsize").value = S.minPct;
    $("mode-icicle").classList.toggle("on", S.mode === "icicle");
    $("mode-sunburst").classList.toggle("on", S.mode === "sunburst");
    applyTheme();
    applySearch();
  }
  // A link to this page followed in the open tab (only the hash changes):
  // the whole state it holds is applied, as on opening it. Only the view,
  // focus and mode were, while search, filter, sort, depth, minimum size,
  // selection and theme went into S without reaching the page.
  async function followHash() {
    const before = { view: S.view, focus: S.focus, depth: S.depth, minPct: S.minPct, selected: S.selected };
    readHash();
    if (!(S.view < S.meta.views.length)) S.view = 0;
    showState();
    if (S.view !== before.view) {
      await switchView(S.view, S.focus, S.selected);
      return;
    }
    renderTable();
    if (S.selected !== before.selected) select(S.selected, false);
    if (S.focus !== before.focus || S.depth !== before.depth || S.minPct !== before.minPct) await redrawWithDetail();
    else draw();
    writeHash();
  }
  // Shows view `v`, zoomed to frame `focus` (its root if it has no such frame).
  let switchSeq = 0;
  async function switchView(v, focus = 0, selected = -1) {
    const seq = ++switchSeq;
    S.view = v; S.focus = focus; S.selected = selected;
    $("thread").value = v;
    // Edges asked for in the old view are not this one's.
    selectSeq++;
    S.pending++;
    try {
      const [, slice] = await Promise.all([ensureStats(v), fetchFocus(focus)]);
      if (seq !== switchSeq) return; // (a later switch shows its own view)
      // The table and the selection are this view's whatever happened to
      // the slice: one superseded by a newer request (the depth changed
      // meanwhile) is drawn when that one comes in (helper-55: the old
      // thread's table stayed).
      renderTable(); select(S.selected, false);
      if (slice) {
        useSlice(slice);
        if (!S.index.has(S.focus)) S.focus = S.slice.id[0];
        draw();
      }
      writeHash();
    } finally {
      S.pending--;
    }
  }

  // A link followed before the page is ready: kept to be applied once it is.
  let linkFollowed = null;
  function noteLinkFollowed() { linkFollowed = location.hash; }
  async function main() {
    readHash();
    applyTheme();
    window.addEventListener("hashchange", noteLinkFollowed);
    const [meta, funcs] = await Promise.all([api("meta"), api("funcs")]);
    S.meta = meta; S.funcs = funcs;
    makeLabels(funcs);
    if (S.view >= meta.views.length) S.view = 0;
    document.title = "perfkit view · " + meta.files.join(" → ");
    $("title").textContent = meta.files.join(meta.diff ? "  →  " : ", ");
    const badge = $("exactness");
    badge.textContent = meta.exact ? "exact tree" : "approximate tree (inferred from caller/callee pairs)";
    badge.classList.toggle("approx", !meta.exact);
    const sel = $("thread");
    meta.views.forEach((v, k) => { const o = el("option", v.name); o.value = k; sel.appendChild(o); });
    sel.disabled = meta.views.length < 2;
    showState();
    wire();
    const statsReady = ensureStats(S.view);
    const slice = await fetchFocus(S.focus);
    // (null: a newer slice was asked for meanwhile, a new depth say, which draws itself.)
    if (slice) {
      useSlice(slice);
      if (!S.index.has(S.focus)) S.focus = S.slice.id[0];
      draw();
    }
    await statsReady;
    renderTable();
    if (S.selected >= 0) select(S.selected);
    if (meta.diff) renderDiff(await api("diff"));
    window.removeEventListener("hashchange", noteLinkFollowed);
    window.addEventListener("hashchange", () => followHash().catch(fail));
    if (linkFollowed !== null) {
      // A link followed while the page opened (helper-55: it was dropped, and
      // the address rewritten to the old view): applied now. (The page's own
      // address writes meanwhile may have replaced it.)
      if (location.hash !== linkFollowed) replaceHash(linkFollowed);
      await followHash();
    } else {
      writeHash();
    }
    timing.readyAt = performance.now();
    setState("ready");
  }
  // Read-only look at what is drawn, for tests and benchmarks.
  window.perfkitView = {
    frames() {
      const out = [], d = S.drawn, g = S.geo, s = S.slice;
      if (!g || !s) return out;
      for (let k = 0; k < d.length; k += 4) {
        const i = d[k], f = s.f[i];
        const base = { id: s.id[i], name: shortName(f), label: label(f), depth: d[k + 3] };
        if (g.kind === "icicle") out.push(Object.assign(base, { x: d[k + 1] + Math.max(d[k + 2], 1) / 2, y: d[k + 3] * ROW + ROW / 2, w: d[k + 2] }));
        else {
          const a = (d[k + 1] + d[k + 2]) / 2, r = (d[k + 3] + 0.5) * g.ringW;
          out.push(Object.assign(base, { x: d[k + 3] === 0 ? g.cx : g.cx + r * Math.cos(a), y: d[k + 3] === 0 ? g.cy : g.cy + r * Math.sin(a), w: (d[k + 2] - d[k + 1]) * r }));
        }
      }
      return out;
    },
    state() { return { busy: S.pending > 0, view: S.view, focus: S.focus, mode: S.mode, selected: S.selected, sliceRoot: S.slice ? S.slice.id[0] : -1, sliceSize: S.slice ? S.slice.id.length : 0 }; },
  };
  main().catch(fail);
})();

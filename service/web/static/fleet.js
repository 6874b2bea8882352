// The fleet panel and the device detail it opens.

import { $, FLEET_PAGE, STREAM_ROWS, WRITE_TOKEN, ago, api, askToken, authHeaders, clock, el, fmt, on, onTick, once, showPayload, stream, svg, topicMatcher } from "./core.js";

// ---- fleet -----------------------------------------------------------------------------------

export const fleet = {
  offset: 0,
  total: 0,
  rows: new Map(), // device_id -> {data, tr, cells, trend: [], relays: Map}
  known: new Set(), // every device id this page has seen (shown or in the stream)
  reloadTimer: null,

  start() {
    $("f-q").addEventListener("input", () => this.schedule(250, true));
    $("f-state").addEventListener("change", () => this.schedule(0, true));
    $("p-prev").addEventListener("click", () => { this.offset = Math.max(0, this.offset - FLEET_PAGE); this.load(); });
    $("p-next").addEventListener("click", () => {
      if (this.offset + FLEET_PAGE < this.total) { this.offset += FLEET_PAGE; this.load(); }
    });
    on("device", (d) => this.device(d));
    on("message", (m) => this.message(m));
    on("connection", (c) => { if (c.connected) this.schedule(0); });
    onTick(() => this.tick());
    this.load();
  },

  schedule(ms, reset = false) {
    if (reset) this.offset = 0;
    clearTimeout(this.reloadTimer);
    this.reloadTimer = setTimeout(() => this.load(), ms);
  },

  async counts() {
    const [all, online, offline] = await Promise.all(
      ["", "&online=true", "&online=false"].map((q) => api(`/devices?limit=1${q}`)),
    );
    $("c-online").textContent = online.total;
    $("c-offline").textContent = offline.total;
    $("c-unknown").textContent = all.total - online.total - offline.total;
  },

  async load() {
    const q = $("f-q").value.trim();
    const state = $("f-state").value;
    const params = new URLSearchParams({ limit: FLEET_PAGE, offset: this.offset });
    if (q) params.set("q", q);
    if (state === "online") params.set("online", "true");
    if (state === "offline") params.set("online", "false");
    let page;
    try {
      [page] = await Promise.all([api(`/devices?${params}`), this.counts()]);
    } catch (err) {
      $("p-info").textContent = `could not load devices: ${err.message}`;
      return;
    }
    // "unknown" (never sent a status) is no API filter: it narrows the page shown.
    const items = state === "unknown" ? page.items.filter((d) => d.is_online == null) : page.items;
    this.total = page.total;
    const body = $("fleet-rows");
    const old = this.rows;
    this.rows = new Map();
    body.replaceChildren();
    for (const d of page.items) this.known.add(d.device_id);
    for (const d of items) {
      const row = old.get(d.device_id) || this.makeRow(d.device_id);
      row.data = { ...row.data, ...d };
      this.rows.set(d.device_id, row);
      body.append(row.tr);
      this.render(row);
      if (!row.detailLoaded) this.enrich(row);
    }
    const last = Math.min(page.total, this.offset + page.items.length);
    $("p-info").textContent = page.total ? `${this.offset + 1}–${last} of ${page.total}` : "no devices yet";
  },

  makeRow(id) {
    const cells = {};
    const tr = el("tr", { "data-device": id, onclick: () => detail.open(id) });
    for (const name of ["dot", "id", "seen", "fw", "ip", "tele", "trend", "relays"]) {
      cells[name] = el("td");
      tr.append(cells[name]);
    }
    cells.dot.append(el("span", { class: "dot" }));
    cells.id.textContent = id;
    cells.relays.className = "relays";
    return { id, tr, cells, data: {}, trend: [], relays: new Map(), latest: null, detailLoaded: false };
  },

  async enrich(row) {
    // Latest telemetry, relays and a 30-minute trend for the rows on screen (a few at a time).
    row.detailLoaded = true;
    const id = encodeURIComponent(row.id);
    const from = new Date(Date.now() - 30 * 60 * 1000).toISOString();
    try {
      const [info, buckets] = await Promise.all([
        api(`/devices/${id}`),
        api(`/devices/${id}/telemetry?bucket=1m&limit=30&from=${encodeURIComponent(from)}`),
      ]);
      row.latest = info.latest_telemetry || row.latest;
      for (const r of info.relays) row.relays.set(r.relay_index, r.state);
      const past = buckets.items.map((b) => b.metrics.temperature.avg).filter((v) => v != null);
      row.trend = [...past, ...row.trend].slice(-60);
      this.render(row);
    } catch {
      row.detailLoaded = false; // try again on the next load
    }
  },

  render(row) {
    const d = row.data;
    const state = d.is_online == null ? "unk" : d.is_online ? "on" : "off";
    row.cells.dot.firstChild.className = `dot ${state}`;
    row.tr.dataset.state = { on: "online", off: "offline", unk: "unknown" }[state];
    row.cells.fw.textContent = d.firmware_version || "–";
    row.cells.ip.textContent = d.ip_address || "–";
    const t = row.latest;
    row.cells.tele.textContent = t ? `${fmt(t.temperature)} °C  ${fmt(t.humidity, 0)} %  ${fmt(t.voltage, 2)} V` : "–";
    row.cells.trend.replaceChildren(sparkline(row.trend));
    row.cells.relays.replaceChildren(
      ...[...row.relays.entries()].sort((a, b) => a[0] - b[0])
        .map(([i, s]) => el("span", { class: s ? "on" : "", title: `relay ${i}: ${s ? "on" : "off"}`, text: i })),
    );
    this.tickRow(row);
  },

  tickRow(row) {
    row.cells.seen.textContent = ago(row.data.last_seen ? Date.parse(row.data.last_seen) : null);
  },

  tick() { for (const row of this.rows.values()) this.tickRow(row); },

  device(d) {
    const row = this.rows.get(d.device_id);
    if (!row) { this.countsSoon(); return this.unseen(d.device_id); }
    row.data.is_online = d.is_online;
    if (d.ip_address) row.data.ip_address = d.ip_address;
    if (d.firmware_version) row.data.firmware_version = d.firmware_version;
    this.render(row);
    this.countsSoon();
  },

  countsSoon() { once("counts", 1000, () => this.counts().catch(() => {})); },

  unseen(id) {
    // A device this page has not shown: new, or on another page. Counts and pages may change.
    if (this.known.has(id)) return;
    this.known.add(id);
    once("fleet", 1500, () => this.load());
  },

  message(m) {
    if (!m.device_id || m.outcome !== "stored") return;
    const row = this.rows.get(m.device_id);
    if (!row) return this.unseen(m.device_id);
    row.data.last_seen = new Date(m.t * 1000).toISOString();
    let payload = null;
    try { payload = JSON.parse(m.payload); } catch { /* not JSON: nothing to show */ }
    if (payload && m.route === "telemetry") {
      row.latest = payload;
      if (payload.temperature != null) row.trend = [...row.trend, payload.temperature].slice(-60);
      this.render(row);
    } else if (payload && m.route === "relay") {
      const index = Number(m.topic.split("/").at(-2));
      row.relays.set(index, Boolean(payload.state));
      this.render(row);
    } else {
      this.tickRow(row);
    }
  },
};

function sparkline(values) {
  const box = svg("svg", { class: "spark", viewBox: "0 0 90 20", preserveAspectRatio: "none" });
  if (values.length < 2) return box;
  const lo = Math.min(...values);
  const hi = Math.max(...values);
  const span = hi - lo || 1;
  const points = values.map((v, i) => `${(i / (values.length - 1)) * 90},${19 - ((v - lo) / span) * 18}`);
  box.append(svg("polyline", { points: points.join(" ") }));
  return box;
}

// ---- device detail ---------------------------------------------------------------------------

const RANGE_BUCKET = { 900: "10s", 3600: "1m", 21600: "5m", 86400: "15m", 604800: "1h" };

export const detail = {
  id: null,
  start() {
    $("dt-close").addEventListener("click", () => this.close());
    $("dt-range").addEventListener("change", () => this.load());
    $("detail").addEventListener("click", (e) => { if (e.target.id === "detail") this.close(); });
    document.addEventListener("keydown", (e) => { if (e.key === "Escape") this.close(); });
    on("device", (d) => { if (d.device_id === this.id) this.load(); });
  },
  open(id) {
    this.id = id;
    $("detail").hidden = false;
    $("dt-title").textContent = id;
    this.load();
  },
  close() { this.id = null; $("detail").hidden = true; },

  async load() {
    const id = this.id;
    if (!id) return;
    const seconds = Number($("dt-range").value);
    const end = new Date();
    const start = new Date(end - seconds * 1000);
    const range = `from=${encodeURIComponent(start.toISOString())}&to=${encodeURIComponent(end.toISOString())}`;
    const path = `/devices/${encodeURIComponent(id)}`;
    let info, tele, conn;
    try {
      [info, tele, conn] = await Promise.all([
        api(path),
        api(`${path}/telemetry?bucket=${RANGE_BUCKET[seconds]}&limit=1000&${range}`),
        api(`${path}/connectivity?limit=1000&${range}`),
      ]);
    } catch (err) {
      $("dt-facts").textContent = `could not load: ${err.message}`;
      return;
    }
    if (id !== this.id) return;
    const state = $("dt-state");
    state.textContent = info.is_online == null ? "unknown" : info.is_online ? "online" : "offline";
    state.className = `chip ${info.is_online == null ? "" : info.is_online ? "good" : "bad"}`;
    const fact = (k, v) => el("span", {}, `${k} `, el("b", { text: v ?? "–" }));
    $("dt-facts").replaceChildren(
      fact("firmware", info.firmware_version), fact("IP", info.ip_address),
      fact("uptime", info.uptime != null ? `${info.uptime}s` : null),
      fact("first seen", new Date(info.first_seen).toLocaleString()),
      fact("last seen", ago(Date.parse(info.last_seen))),
    );
    const charts = $("dt-charts");
    charts.replaceChildren(
      ...["temperature", "humidity", "voltage", "memory_free"].map((m) => chart(m, tele.items, start, end)),
    );
    $("dt-timeline").replaceChildren(timeline(conn, start, end, info));
    charts.dataset.range = String(seconds);
    this.relays(info.relays, range);
  },

  async relays(relays, range) {
    const box = $("dt-relays");
    if (!relays.length) { box.textContent = "no relay reported"; return; }
    const table = el("table", { class: "grid" },
      el("thead", {}, el("tr", {}, ...["relay", "state", "by", "since", "changes in range"].map((h) => el("th", { text: h })))));
    const body = el("tbody");
    table.append(body);
    box.replaceChildren(table);
    for (const r of relays) {
      const history = await api(`/devices/${encodeURIComponent(this.id)}/relays/${r.relay_index}/history?limit=50&${range}`)
        .catch(() => []);
      const changes = history.slice(-8).map((h) => `${clock(Date.parse(h.ts))} ${h.state ? "on" : "off"}`).join(", ");
      body.append(el("tr", {},
        el("td", { text: r.relay_index }), el("td", { text: r.state ? "on" : "off" }),
        el("td", { text: r.triggered_by || "–" }), el("td", { text: new Date(r.ts).toLocaleString() }),
        el("td", { text: `${history.length}${history.length ? ": " : ""}${changes}` })));
    }
  },
};

function chart(metric, buckets, start, end) {
  const W = 400, H = 140, L = 38, B = 16;
  const box = el("div", { class: "chart", "data-metric": metric });
  box.append(el("div", { class: "title", text: metric.replace("_", " ") }));
  const points = buckets.map((b) => ({ t: Date.parse(b.start), ...b.metrics[metric] })).filter((p) => p.avg != null);
  const area = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none" });
  box.append(area);
  area.append(svg("line", { class: "axis", x1: L, y1: H - B, x2: W, y2: H - B }));
  if (!points.length) {
    const t = svg("text", { x: L + 10, y: H / 2 });
    t.textContent = "no data in this range";
    area.append(t);
    return box;
  }
  const lo = Math.min(...points.map((p) => p.min));
  const hi = Math.max(...points.map((p) => p.max));
  const span = hi - lo || 1;
  const x = (t) => L + ((t - start) / (end - start)) * (W - L);
  const y = (v) => 4 + (1 - (v - lo) / span) * (H - B - 8);
  const upper = points.map((p) => `${x(p.t)},${y(p.max)}`);
  const lower = points.map((p) => `${x(p.t)},${y(p.min)}`).reverse();
  area.append(svg("path", { class: "band", d: `M${upper.join("L")}L${lower.join("L")}Z` }));
  area.append(svg("polyline", { points: points.map((p) => `${x(p.t)},${y(p.avg)}`).join(" ") }));
  if (points.length < 40) for (const p of points) area.append(svg("circle", { cx: x(p.t), cy: y(p.avg), r: 2.5 }));
  for (const [v, yy] of [[hi, 12], [lo, H - B - 2]]) {
    const t = svg("text", { x: 2, y: yy });
    t.textContent = fmt(v, Math.abs(v) >= 100 ? 0 : span < 1 ? 3 : 1);
    area.append(t);
  }
  for (const [t, anchor] of [[start, "start"], [end, "end"]]) {
    const label = svg("text", { x: t === start ? L : W - 2, y: H - 3, "text-anchor": anchor });
    const day = new Date(t).toLocaleDateString([], { month: "short", day: "numeric" });
    label.textContent = end - start > 6 * 3600 * 1000 ? `${day} ${clock(t).slice(0, 5)}` : clock(t);
    area.append(label);
  }
  return box;
}

function timeline(changes, start, end, info) {
  // Segments between online/offline changes; before the first change in range the state is unknown.
  const W = 1000;
  const area = svg("svg", { class: "timeline", viewBox: `0 0 ${W} 26`, preserveAspectRatio: "none" });
  const x = (t) => ((t - start) / (end - start)) * W;
  let t0 = +start;
  let state = "unk";
  const segments = [];
  for (const c of changes) {
    const t = Date.parse(c.ts);
    segments.push([t0, t, state]);
    t0 = t;
    state = c.is_online ? "on" : "off";
  }
  if (!changes.length && info.is_online != null) state = info.is_online ? "on" : "off";
  segments.push([t0, +end, state]);
  for (const [a, b, s] of segments) {
    if (b <= a) continue;
    const rect = svg("rect", { class: s, x: x(a), y: 3, width: Math.max(1, x(b) - x(a)), height: 20 });
    const title = svg("title");
    title.textContent = `${s === "on" ? "online" : s === "off" ? "offline" : "unknown"} ${clock(a)} – ${clock(b)}`;
    rect.append(title);
    area.append(rect);
  }
  return area;
}


// The health bar, the live stream and the dead letters.

import { $, FLEET_PAGE, STREAM_ROWS, WRITE_TOKEN, ago, api, askToken, authHeaders, clock, el, fmt, on, onTick, once, showPayload, stream, svg, topicMatcher } from "./core.js";

// ---- health bar ------------------------------------------------------------------------------

export const healthBar = {
  async start() {
    on("health", (h) => this.show(h));
    on("connection", (c) => this.connection(c));
    onTick(() => this.tick());
    try {
      const resp = await fetch("/health/mqtt-monitor", { headers: authHeaders() });
      if (resp.status !== 401) this.show(await resp.json());
    } catch { /* the stream says so */ }
  },
  show(h) {
    const status = $("status");
    status.textContent = h.status;
    status.className = `chip ${{ healthy: "good", degraded: "warn" }[h.status] || "bad"}`;
    const yes = (ok, good = "ok", bad = "down") => (ok ? good : bad);
    $("h-broker").textContent = h.monitor_enabled ? yes(h.broker_connected, "connected", "disconnected") : "off";
    $("h-subs").textContent = yes(h.subscriptions_granted, "granted", "missing");
    $("h-db").textContent = yes(h.database_ok);
    $("h-backlog").textContent = h.writer_backlog ?? h.messages_in_flight ?? "?";
    $("h-rate").textContent = h.messages_per_second ?? "–";
    $("h-reasons").textContent = (h.reasons || []).join("; ");
  },
  connection(c) {
    this.state = c;
    $("healthbar").classList.toggle("lost", !c.connected);
    if (!c.connected) {
      // What the bar showed is no longer known to be true.
      $("status").textContent = "status unknown";
      $("status").className = "chip";
    }
    this.tick();
  },
  tick() {
    const c = this.state;
    const conn = $("conn");
    if (!c) return;
    if (c.connected) {
      conn.textContent = "live";
      conn.className = "chip good";
    } else {
      const wait = Math.max(0, Math.ceil((stream.nextTry - Date.now()) / 1000));
      conn.textContent = `connection to the service lost: ${c.why}; retrying in ${wait}s`;
      conn.className = "chip bad";
    }
  },
};

// ---- live stream -----------------------------------------------------------------------------

export const live = {
  items: [], // newest last, at most STREAM_ROWS
  paused: false,
  held: 0,
  matcher: null,

  start() {
    for (const id of ["s-topic", "s-device", "s-outcome"]) $(id).addEventListener("input", () => this.refilter());
    $("s-pause").addEventListener("click", () => this.toggle());
    on("message", (m, id) => this.add({ ...m, id }));
    on("missed", (m) => this.add({ notice: this.noticeText(m), t: Date.now() / 1000 }));
    on("connection", (c) => { if (!c.connected && c.wasUp) this.add({ notice: `stream lost: ${c.why}`, t: Date.now() / 1000 }); });
  },

  noticeText(m) {
    const n = m.count == null ? "an unknown number of" : m.count;
    const why = {
      slow_client: "this page fell behind",
      rate_limit: "over EVENTS_MAX_RATE (not shown; all were committed)",
      beyond_resume_buffer: "older than the service keeps for a reconnect",
      stream_restarted: "the service restarted, or nobody listened for a while",
      hub_behind: "the service's event hub fell behind",
    }[m.reason] || m.reason;
    return `missed ${n} events: ${why}`;
  },

  toggle() {
    this.paused = !this.paused;
    $("s-pause").textContent = this.paused ? "resume" : "pause";
    if (!this.paused) { this.held = 0; this.render(); }
    this.info();
  },

  add(item) {
    this.items.push(item);
    if (this.items.length > STREAM_ROWS) this.items.shift();
    if (this.paused) { this.held++; this.info(); return; }
    if (!this.matches(item)) return;
    const body = $("stream-rows");
    body.prepend(this.row(item));
    while (body.childElementCount > STREAM_ROWS) body.lastElementChild.remove();
    this.info();
  },

  matches(m) {
    if (m.notice) return true;
    const device = $("s-device").value.trim();
    const outcome = $("s-outcome").value;
    if (device && m.device_id !== device) return false;
    if (outcome && m.outcome !== outcome) return false;
    return !this.matcher || this.matcher.error ? true : this.matcher.test(m.topic);
  },

  refilter() {
    this.matcher = topicMatcher($("s-topic").value.trim());
    $("s-topic").setCustomValidity(this.matcher && this.matcher.error ? this.matcher.error : "");
    this.render();
  },

  render() {
    const rows = this.items.filter((m) => this.matches(m)).reverse().map((m) => this.row(m));
    $("stream-rows").replaceChildren(...rows);
    this.info();
  },

  info() {
    const shown = $("stream-rows").childElementCount;
    $("s-info").textContent = `${shown} shown` + (this.paused ? `, paused (${this.held} new)` : "");
  },

  row(m) {
    if (m.notice) return el("tr", { class: "notice" }, el("td", { text: clock(m.t * 1000) }), el("td", { colspan: 4, text: m.notice }));
    const outcome = m.outcome === "dead_letter" ? `dead letter (${m.stage})` : "stored";
    const tr = el("tr", { "data-topic": m.topic, "data-outcome": m.outcome },
      el("td", { text: clock(m.t * 1000) }), el("td", { text: m.topic, title: m.topic }),
      el("td", { text: m.route || "–" }), el("td", { text: m.device_id || "–" }),
      el("td", { class: `outcome-${m.outcome}`, text: outcome, title: m.error || "" }));
    tr.addEventListener("click", () => {
      for (const s of document.querySelectorAll("#stream-rows tr.sel")) s.classList.remove("sel");
      tr.classList.add("sel");
      showPayload($("s-payload"), m.payload, m.truncated, m.error);
    });
    return tr;
  },
};

// ---- dead letters ----------------------------------------------------------------------------

export const dead = {
  start() {
    $("d-refresh").addEventListener("click", () => this.load());
    on("message", (m) => { if (m.outcome === "dead_letter") this.soon(); });
    on("connection", (c) => { if (c.connected) this.soon(); });
    this.load();
  },
  soon() { once("dead", 1000, () => this.load()); },

  async load() {
    let page;
    try {
      // Newest 50 open ones: the API lists oldest first, so count first, then read the tail.
      const count = await api("/dead-letters?resolved=false&limit=1");
      page = await api(`/dead-letters?resolved=false&limit=50&offset=${Math.max(0, count.total - 50)}`);
    } catch (err) {
      $("d-info").textContent = `could not load: ${err.message}`;
      return;
    }
    $("d-info").textContent = `${page.total} open`;
    $("dead-rows").replaceChildren(...page.items.reverse().map((d) => this.row(d)));
  },

  row(d) {
    const button = el("button", { type: "button", text: "replay", "data-replay": d.id });
    button.addEventListener("click", (e) => { e.stopPropagation(); this.replay(d, button); });
    const tr = el("tr", { "data-id": d.id },
      el("td", { text: d.id }), el("td", { text: new Date(d.received_at).toLocaleTimeString([], { hour12: false }) }),
      el("td", { text: d.topic, title: d.topic }), el("td", { text: d.stage }),
      el("td", { text: d.last_replay_error || d.error_message, title: d.error_message }), el("td", {}, button));
    tr.addEventListener("click", () => showPayload($("d-payload"), d.payload_text, false, d.error_message));
    return tr;
  },

  async replay(d, button) {
    let token = sessionStorage.getItem(WRITE_TOKEN);
    if (!token) token = await askToken(`Replaying dead letter ${d.id} needs the API token (API_TOKEN).`, WRITE_TOKEN);
    if (!token) return;
    button.disabled = true;
    button.textContent = "…";
    try {
      const resp = await fetch(`/dead-letters/${d.id}/replay`, { method: "POST", headers: authHeaders(WRITE_TOKEN) });
      const body = await resp.json().catch(() => ({}));
      if (resp.status === 401) {
        sessionStorage.removeItem(WRITE_TOKEN);
        button.textContent = "wrong token";
      } else if (!resp.ok) {
        button.textContent = `${resp.status}: ${body.detail || "failed"}`;
      } else {
        button.textContent = body.resolved ? "stored" : "refused again";
        button.title = body.resolved ? "" : `${body.stage}: ${body.error}`;
        if (body.resolved) setTimeout(() => this.load(), 1200);
      }
    } catch (err) {
      button.textContent = `failed: ${err.message}`;
    } finally {
      button.disabled = false;
    }
  },
};


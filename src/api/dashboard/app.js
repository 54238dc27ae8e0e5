// The Switchyard dashboard: plain DOM, no framework, no build step. Everything a client sent
// (ids, topics, payloads) is put on the page as text, never as HTML.
"use strict";

const state = { csrf: null, user: null, timer: null, mqtt: null };

// ---- helpers -------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// Replaces `el`'s children, skipping the nulls conditional parts leave.
function fill(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

function main(...children) {
  return fill(document.getElementById("main"), ...children);
}

function toast(text) {
  const t = document.getElementById("toast");
  t.textContent = text;
  t.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.remove("show"), 3500);
}

class ApiError extends Error {
  constructor(status, body) {
    super(body && body.error ? body.error : "HTTP " + status);
    this.status = status;
    this.details = (body && body.details) || [];
  }
}

async function api(method, path, body) {
  const headers = { accept: "application/json" };
  if (method !== "GET") headers["x-csrf-token"] = state.csrf || "";
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch("/api/v1" + path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await res.json(); } catch (_) { /* empty body */ }
  if (res.status === 401 && path !== "/login") { showLogin(); throw new ApiError(401, data); }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

const enc = encodeURIComponent;
const fmtNum = (n) => (n === null || n === undefined ? "—" : Number(n).toLocaleString());
const fmtTime = (ms) => (ms ? new Date(ms).toLocaleString() : "—");
function fmtBytes(n) {
  if (n < 1024) return n + " B";
  if (n < 1048576) return (n / 1024).toFixed(1) + " KiB";
  return (n / 1048576).toFixed(1) + " MiB";
}
function prettyPayload(text) {
  if (text === null || text === undefined) return "(binary)";
  try { return JSON.stringify(JSON.parse(text), null, 2); } catch (_) { return text; }
}

function table(columns, rows, empty) {
  if (!rows.length) return h("p", { class: "muted" }, empty || "Nothing here.");
  return h("div", { class: "table-wrap" },
    h("table", {},
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.num ? "num" : null }, c.title)))),
      h("tbody", {}, rows.map((r) => h("tr", {}, columns.map((c) =>
        h("td", { class: c.num ? "num" : null }, c.cell(r))))))));
}

// ---- login ---------------------------------------------------------------------------------

async function showLogin() {
  stopTimer();
  document.getElementById("nav").hidden = true;
  document.getElementById("logout").hidden = true;
  document.getElementById("who").textContent = "";
  let status = { users_configured: true };
  try { status = await (await fetch("/api/v1/auth")).json(); } catch (_) { /* keep default */ }
  if (!status.users_configured) {
    main(h("section", { class: "login" },
      h("h1", {}, "No users yet"),
      h("p", {}, "The dashboard never opens without a login. Create the first user on the broker's machine:"),
      h("pre", {}, "switchyard passwd users.txt admin"),
      h("p", {}, "and point the HTTP listener at the file in the configuration:"),
      h("pre", {}, "[http]\npassword_file = \"users.txt\""),
      status.password_file_configured
        ? h("p", {}, "This broker has a password file configured, with no users in it yet: add one and reload this page.")
        : h("p", {}, "Then restart the broker and reload this page.")));
    return;
  }
  const err = h("p", { class: "error", role: "alert" });
  const user = h("input", { id: "username", name: "username", autocomplete: "username", required: true });
  const pass = h("input", { id: "password", name: "password", type: "password", autocomplete: "current-password", required: true });
  const form = h("form", { class: "login", onsubmit: async (e) => {
    e.preventDefault();
    err.textContent = "";
    try {
      const r = await api("POST", "/login", { username: user.value, password: pass.value });
      state.csrf = r.csrf_token;
      state.user = r.username;
      if (!location.hash || location.hash === "#/login") location.hash = "#/overview";
      route();
    } catch (ex) { err.textContent = ex.message; }
  } },
  h("h1", {}, "Log in to Switchyard"),
  h("label", { for: "username" }, "User name"), user,
  h("label", { for: "password" }, "Password"), pass,
  h("div", { class: "row" }, h("button", { class: "primary", type: "submit" }, "Log in")), err);
  main(form);
  user.focus();
}

async function logout() {
  try { await api("POST", "/logout"); } catch (_) { /* gone anyway */ }
  state.csrf = null;
  showLogin();
}

// ---- pages ---------------------------------------------------------------------------------

function stopTimer() {
  if (state.timer) clearInterval(state.timer);
  state.timer = null;
}
function every(ms, fn) {
  stopTimer();
  fn();
  state.timer = setInterval(fn, ms);
}

function drawChart(canvas, series, colors) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, hgt = canvas.clientHeight;
  canvas.width = w * dpr; canvas.height = hgt * dpr;
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  g.clearRect(0, 0, w, hgt);
  canvas.dataset.points = String(Math.max(0, ...series.map((s) => s.length)));
  const all = series.flat();
  const max = Math.max(1, ...all);
  g.strokeStyle = "#e5e7eb"; g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) { const y = 4 + (hgt - 24) * i / 4; g.beginPath(); g.moveTo(0, y); g.lineTo(w, y); g.stroke(); }
  g.fillStyle = "#5b6475"; g.font = "11px system-ui";
  g.fillText(fmtNum(max), 4, 14);
  series.forEach((s, k) => {
    if (s.length < 2) return;
    g.strokeStyle = colors[k]; g.lineWidth = 2; g.beginPath();
    s.forEach((v, i) => {
      const x = (w - 2) * i / (s.length - 1) + 1;
      const y = 4 + (hgt - 24) * (1 - v / max);
      if (i) g.lineTo(x, y); else g.moveTo(x, y);
    });
    g.stroke();
  });
}

function chartCard(title, legend) {
  const canvas = h("canvas", { role: "img", "aria-label": title });
  return { canvas, el: h("div", { class: "card" }, h("h2", {}, title), canvas,
    h("p", { class: "muted" }, legend)) };
}

async function pageOverview() {
  const nums = {};
  const card = (key, label) => { nums[key] = h("div", { class: "n" }, "…"); return h("div", { class: "card" }, nums[key], h("div", { class: "l" }, label)); };
  const rate = chartCard("Messages per second (last 5 minutes)", "in (blue), out (green), dropped (red)");
  const conns = chartCard("Connections (last 5 minutes)", "clients (blue), sessions (green)");
  const health = h("p", {});
  main(h("h1", {}, "Overview"), health,
    h("div", { class: "cards" }, card("clients", "clients connected"), card("sessions", "sessions"),
      card("in", "messages in / s"), card("out", "messages out / s"), card("dropped", "dropped / s"),
      card("retained", "retained messages"), card("subs", "subscriptions")),
    h("div", { class: "charts" }, rate.el, conns.el));
  every(2000, async () => {
    const [hist, m] = await Promise.all([api("GET", "/metrics/history?seconds=300"), api("GET", "/metrics")]);
    const d = hist.data, last = d[d.length - 1] || {};
    nums.clients.textContent = fmtNum(m.counters.clients_connected);
    nums.sessions.textContent = fmtNum(m.counters.sessions);
    nums.retained.textContent = fmtNum(m.counters.retained_messages);
    nums.subs.textContent = fmtNum(m.counters.subscriptions);
    nums.in.textContent = fmtNum(last.messages_in || 0);
    nums.out.textContent = fmtNum(last.messages_out || 0);
    nums.dropped.textContent = fmtNum(last.dropped || 0);
    const st = m.health.status;
    fill(health, h("span", { class: st === "ok" ? "ok" : "error" }, "Health: " + st),
      m.health.problems.length ? " — " + m.health.problems.join("; ") : "",
      h("span", { class: "muted" }, "  · up " + Math.floor(m.health.uptime_s / 60) + " min"));
    drawChart(rate.canvas, [d.map((x) => x.messages_in), d.map((x) => x.messages_out), d.map((x) => x.dropped)], ["#1f6feb", "#2e7d32", "#c62828"]);
    drawChart(conns.canvas, [d.map((x) => x.clients), d.map((x) => x.sessions)], ["#1f6feb", "#2e7d32"]);
  });
}

async function pageClients() {
  const search = h("input", { id: "client-search", type: "search", placeholder: "client id contains…" });
  const holder = h("div", {});
  const load = async () => {
    const q = search.value ? "?clientid=" + enc(search.value) : "";
    const r = await api("GET", "/clients" + q + (q ? "&" : "?") + "limit=500");
    fill(holder, h("p", { class: "muted" }, r.total + " connected"), table([
      { title: "Client id", cell: (c) => h("a", { href: "#/client/" + enc(c.clientid) }, c.clientid) },
      { title: "User", cell: (c) => c.username || "—" },
      { title: "Listener", cell: (c) => c.listener },
      { title: "Peer", cell: (c) => c.peer },
      { title: "Protocol", cell: (c) => c.protocol },
      { title: "In / out msgs", num: true, cell: (c) => fmtNum(c.messages_in) + " / " + fmtNum(c.messages_out) },
      { title: "", cell: (c) => h("button", { class: "danger", type: "button", "aria-label": "Kick " + c.clientid,
        onclick: () => kick(c.clientid, load) }, "Kick") },
    ], r.data, "No client is connected."));
  };
  main(h("h1", {}, "Clients"),
    h("div", { class: "row" }, h("label", { for: "client-search", class: "grow" }, "Search", search)),
    holder);
  search.addEventListener("input", () => load());
  every(3000, load);
}

async function kick(id, then) {
  if (!confirm("Disconnect " + id + "? Its session stays.")) return;
  try { await api("DELETE", "/clients/" + enc(id)); toast("Kicked " + id); } catch (e) { toast(e.message); }
  if (then) then();
}

async function pageClient(id) {
  stopTimer();
  let c;
  try { c = await api("GET", "/clients/" + enc(id)); } catch (e) {
    let s = null;
    try { s = await api("GET", "/sessions/" + enc(id)); } catch (_) { /* none */ }
    main(h("h1", {}, id), h("p", {}, "Not connected."), s ? h("pre", {}, JSON.stringify(s, null, 2)) : h("p", { class: "muted" }, "No session either."),
      h("p", {}, h("a", { href: "#/clients" }, "Back to clients")));
    return;
  }
  const facts = [["Listener", c.listener], ["Peer", c.peer], ["Protocol", c.protocol], ["User", c.username || "—"],
    ["Keep-alive", c.keep_alive + " s"], ["Connected", fmtTime(c.connected_at_ms)], ["Session expiry", c.session_expiry_s + " s"],
    ["Queued", fmtNum(c.queued)], ["In flight", fmtNum(c.inflight)],
    ["Messages in / out", fmtNum(c.messages_in) + " / " + fmtNum(c.messages_out)],
    ["Bytes in / out", fmtBytes(c.bytes_in) + " / " + fmtBytes(c.bytes_out)]];
  main(h("h1", {}, "Client ", h("code", {}, c.clientid)),
    h("div", { class: "cards" }, facts.map(([l, v]) => h("div", { class: "card" }, h("div", { class: "l" }, l), h("div", {}, v)))),
    h("h2", {}, "Subscriptions"),
    table([{ title: "Filter", cell: (s) => s.filter }, { title: "QoS", cell: (s) => s.qos },
      { title: "No local", cell: (s) => (s.no_local ? "yes" : "no") }], c.subscriptions, "No subscriptions."),
    h("div", { class: "row" }, h("button", { class: "danger", type: "button", onclick: () => kick(c.clientid, () => { location.hash = "#/clients"; }) }, "Kick this client")));
}

function explorerUrl(listeners) {
  const ws = listeners.find((l) => l.kind === "wss") || listeners.find((l) => l.kind === "ws");
  if (!ws) return null;
  const proto = ws.kind === "wss" ? "wss" : "ws";
  return proto + "://" + location.hostname + ":" + ws.port + (ws.path || "/mqtt");
}

async function pageTopics() {
  stopTimer();
  const listeners = (await api("GET", "/listeners")).data;
  const url = h("input", { id: "ws-url", value: explorerUrl(listeners) || "" });
  const filter = h("input", { id: "filter", value: "#" });
  const user = h("input", { id: "mqtt-user", placeholder: "optional" });
  const pass = h("input", { id: "mqtt-pass", type: "password", placeholder: "optional" });
  const status = h("p", { class: "muted", role: "status" }, "Not subscribed.");
  const list = h("ul", { class: "msgs", id: "messages", "aria-live": "polite" });
  const subscribe = () => {
    if (!window.mqtt) { status.textContent = "mqtt.js was not built into this broker: run scripts/install-build-deps and rebuild."; return; }
    if (state.mqtt) state.mqtt.end(true);
    fill(list);
    const opts = { clientId: "dashboard-" + Math.random().toString(16).slice(2, 10), clean: true, reconnectPeriod: 0 };
    if (user.value) { opts.username = user.value; opts.password = pass.value; }
    const client = window.mqtt.connect(url.value, opts);
    state.mqtt = client;
    status.textContent = "Connecting to " + url.value + "…";
    client.on("connect", () => client.subscribe(filter.value, { qos: 0 }, (err) => {
      status.textContent = err ? "Subscribe failed: " + err.message : "Subscribed to " + filter.value + " — messages appear below.";
      loadLists();
    }));
    client.on("error", (e) => { status.textContent = "MQTT error: " + e.message; });
    client.on("message", (topic, payload, packet) => {
      let text = null;
      try { text = new TextDecoder("utf-8", { fatal: true }).decode(payload); } catch (_) { /* binary */ }
      list.prepend(h("li", {}, h("div", { class: "t" }, topic),
        h("div", { class: "muted" }, new Date().toLocaleTimeString() + " · QoS " + packet.qos + (packet.retain ? " · retained" : "") + " · " + payload.length + " B"),
        h("pre", {}, text === null ? "(binary, " + payload.length + " bytes)" : prettyPayload(text))));
      while (list.children.length > 200) list.lastChild.remove();
    });
  };
  const topicsHolder = h("div", {});
  const retainedHolder = h("div", {});
  const loadLists = async () => {
    const t = await api("GET", "/topics");
    fill(topicsHolder, table([{ title: "Filter", cell: (r) => r.filter }, { title: "Subscribers", num: true, cell: (r) => fmtNum(r.subscribers) }], t.data, "No subscriptions."));
    const r = await api("GET", "/retained?limit=100");
    fill(retainedHolder, table([{ title: "Topic", cell: (m) => m.topic }, { title: "Payload", cell: (m) => (m.payload === null ? "(binary)" : m.payload.slice(0, 120)) },
      { title: "", cell: (m) => h("button", { type: "button", class: "danger", "aria-label": "Delete retained " + m.topic, onclick: async () => {
        try { await api("DELETE", "/retained/message?topic=" + enc(m.topic)); toast("Deleted"); loadLists(); } catch (e) { toast(e.message); } } }, "Delete") }],
    r.data, "No retained messages."));
  };
  const pubTopic = h("input", { id: "pub-topic", value: "dashboard/test" });
  const pubPayload = h("input", { id: "pub-payload", value: "{\"hello\":\"world\"}" });
  const pubRetain = h("input", { id: "pub-retain", type: "checkbox" });
  main(h("h1", {}, "Topic explorer"),
    h("p", { class: "muted" }, "Subscribes from this browser over the broker's own MQTT WebSocket listener (mqtt.js)."),
    h("form", { onsubmit: (e) => { e.preventDefault(); subscribe(); } },
      h("div", { class: "row" }, h("label", { for: "ws-url", class: "grow" }, "WebSocket URL", url)),
      h("div", { class: "row" }, h("label", { for: "filter", class: "grow" }, "Topic filter", filter),
        h("label", { for: "mqtt-user" }, "MQTT user", user), h("label", { for: "mqtt-pass" }, "MQTT password", pass),
        h("button", { class: "primary", type: "submit" }, "Subscribe"))),
    status, list,
    h("h2", {}, "Publish a test message"),
    h("form", { onsubmit: async (e) => {
      e.preventDefault();
      try { const r = await api("POST", "/publish", { topic: pubTopic.value, payload: pubPayload.value, retain: pubRetain.checked });
        toast("Published to " + r.queued + " subscriber(s)"); loadLists(); } catch (ex) { toast(ex.message); } } },
      h("div", { class: "row" }, h("label", { for: "pub-topic", class: "grow" }, "Topic", pubTopic),
        h("label", { for: "pub-payload", class: "grow" }, "Payload", pubPayload),
        h("label", { for: "pub-retain", class: "check" }, pubRetain, "retain"),
        h("button", { type: "submit" }, "Publish"))),
    h("h2", {}, "Subscribed filters"), topicsHolder,
    h("h2", {}, "Retained messages"), retainedHolder);
  loadLists();
}

function errorLines(details) {
  const lines = new Set();
  for (const d of details) {
    const m = /:(\d+)(?::\d+)?: /.exec(d);
    if (m) lines.add(Number(m[1]));
  }
  return lines;
}

async function pageRules() {
  const r = await api("GET", "/rules");
  const fileList = h("ul", {}, (r.files || []).map((f) => h("li", {}, h("a", { href: "#/rule/" + enc(f) }, f))));
  main(h("h1", {}, "Rules"),
    r.last_reload_errors && r.last_reload_errors.length ? h("ul", { class: "errors" }, r.last_reload_errors.map((e) => h("li", {}, e))) : null,
    table([
      { title: "Rule", cell: (x) => h("span", {}, x.name, h("br"), h("span", { class: "muted" }, x.file.split("/").pop() + ":" + x.line)) },
      { title: "From", cell: (x) => [].concat(x.from).join(", ") },
      { title: "Sinks", cell: (x) => x.sinks.join(", ") },
      { title: "Matched / passed / failed", num: true, cell: (x) => fmtNum(x.matched) + " / " + fmtNum(x.passed) + " / " + fmtNum(x.failed) },
      { title: "Last error", cell: (x) => (x.last_error ? h("span", { class: "error" }, x.last_error.error) : "—") },
      { title: "", cell: (x) => h("button", { type: "button", onclick: async () => {
        try { await api("PUT", "/rules/enabled/" + enc(x.key), { enabled: !x.enabled }); route(); } catch (e) { toast(e.message); } } },
      x.enabled ? "Disable" : "Enable") },
    ], r.rules, "No rules loaded."),
    h("h2", {}, "Rule files"), fileList,
    h("div", { class: "row" }, h("a", { class: "btn", href: "#/rule/" }, "New rule file")));
}

async function pageRule(name) {
  stopTimer();
  let source = "rule(\"my_rule\")\n    .from([\"sensors/#\"])\n    .when(|m| true)\n    .to(sink(\"NAME\"));\n";
  if (name) {
    try { source = (await api("GET", "/rules/files/" + enc(name))).source; } catch (e) { toast(e.message); }
  }
  const nameInput = h("input", { id: "rule-name", value: name || "new_rule.rhai" });
  const text = h("textarea", { id: "rule-source", spellcheck: "false", "aria-label": "Rule file source" });
  text.value = source;
  const gutter = h("div", { class: "gutter", "aria-hidden": "true" });
  let bad = new Set();
  const renderGutter = () => {
    const n = text.value.split("\n").length;
    fill(gutter, ...Array.from({ length: n }, (_, i) => h("div", { class: bad.has(i + 1) ? "bad" : null }, String(i + 1))));
    gutter.scrollTop = text.scrollTop;
  };
  text.addEventListener("input", renderGutter);
  text.addEventListener("scroll", () => { gutter.scrollTop = text.scrollTop; });
  const errors = h("ul", { class: "errors", id: "rule-errors", role: "alert" });
  const saved = h("p", { class: "ok", id: "rule-saved", role: "status" });
  const save = async () => {
    fill(errors); saved.textContent = ""; bad = new Set();
    try {
      const r = await api("PUT", "/rules/files/" + enc(nameInput.value), { source: text.value });
      saved.textContent = "Saved and loaded: " + r.rules + " rule(s) active.";
      if (location.hash !== "#/rule/" + enc(nameInput.value)) history.replaceState(null, "", "#/rule/" + enc(nameInput.value));
    } catch (e) {
      const details = e.details.length ? e.details : [e.message];
      bad = errorLines(details);
      fill(errors, h("li", {}, e.message), ...details.map((d) => h("li", {}, d)));
    }
    renderGutter();
  };
  const tTopic = h("input", { id: "test-topic", value: "sensors/1/temp" });
  const tPayload = h("textarea", { id: "test-payload", rows: 3 });
  tPayload.value = "{\"temp\": 31.5}";
  const tClient = h("input", { id: "test-client", value: "device-1" });
  const tOut = h("div", { id: "test-result" });
  const test = async () => {
    fill(tOut);
    try {
      const r = await api("POST", "/rules/test", { source: text.value, file: nameInput.value, message: { topic: tTopic.value, payload: tPayload.value, clientid: tClient.value } });
      fill(tOut,
        h("p", {}, "Rule ", h("code", {}, r.rule), r.matched ? " matches the topic; " : " does not match the topic; ",
          r.when === null ? "" : "when → " + r.when),
        r.error ? h("p", { class: "error" }, r.error) : null,
        r.outputs.length ? h("pre", {}, r.outputs.map((o) => JSON.stringify(o, null, 2)).join("\n")) : h("p", { class: "muted" }, "No output."),
        h("p", { class: "muted" }, "Would go to: " + r.sinks.join(", ") + " (nothing was sent)."));
    } catch (e) {
      const details = e.details.length ? e.details : [e.message];
      bad = errorLines(details); renderGutter();
      fill(tOut, h("ul", { class: "errors" }, details.map((d) => h("li", {}, d))));
    }
  };
  main(h("h1", {}, name ? "Rule file " + name : "New rule file"),
    h("div", { class: "split" },
      h("section", {},
        h("div", { class: "row" }, h("label", { for: "rule-name", class: "grow" }, "File name", nameInput)),
        h("div", { class: "editor" }, gutter, text),
        h("div", { class: "row" }, h("button", { class: "primary", type: "button", id: "rule-save", onclick: save }, "Save and load"),
          name ? h("button", { class: "danger", type: "button", onclick: async () => {
            if (!confirm("Delete " + name + "?")) return;
            try { await api("DELETE", "/rules/files/" + enc(name)); location.hash = "#/rules"; } catch (e) { toast(e.message); } } }, "Delete") : null),
        saved, errors),
      h("section", { "aria-label": "Test against a sample message" },
        h("h2", {}, "Test against a sample message"),
        h("label", { for: "test-topic" }, "Topic"), tTopic,
        h("label", { for: "test-payload" }, "Payload"), tPayload,
        h("label", { for: "test-client" }, "Client id"), tClient,
        h("div", { class: "row" }, h("button", { type: "button", id: "rule-test", onclick: test }, "Run test")),
        tOut)));
  renderGutter();
}

async function pageExtensions() {
  const sinksHolder = h("div", {}), pluginsHolder = h("div", {});
  main(h("h1", {}, "Sinks & plugins"), h("h2", {}, "Sinks"), sinksHolder, h("h2", {}, "Plugins"), pluginsHolder);
  every(3000, async () => {
    const [s, p] = await Promise.all([api("GET", "/sinks"), api("GET", "/plugins")]);
    fill(sinksHolder, table([
      { title: "Sink", cell: (x) => x.name + " (" + x.kind + ")" },
      { title: "State", cell: (x) => h("span", { class: "state-" + x.state }, x.state) },
      { title: "Sent / failed / dropped", num: true, cell: (x) => fmtNum(x.sent) + " / " + fmtNum(x.failed) + " / " + fmtNum(x.dropped) },
      { title: "Buffered", num: true, cell: (x) => fmtNum(x.buffered) + " (" + x.buffer + ")" },
      { title: "Last success", cell: (x) => fmtTime(x.last_success_ms) },
      { title: "Last error", cell: (x) => (x.last_error ? h("span", { class: "error" }, x.last_error) : "—") },
    ], s.data || [], "No sinks configured."));
    fill(pluginsHolder, table([
      { title: "Plugin", cell: (x) => x.name + " v" + x.version },
      { title: "Priority", num: true, cell: (x) => x.priority },
      { title: "Breaker", cell: (x) => h("span", { class: "state-" + String(x.breaker).replace(" ", "_") }, x.breaker) },
      { title: "Calls / failures", num: true, cell: (x) => fmtNum(x.calls) + " / " + fmtNum(x.failures) },
      { title: "", cell: (x) => h("span", {},
        h("button", { type: "button", onclick: async () => { try { await api("POST", "/plugins/" + enc(x.name) + "/reload"); toast("Reloaded " + x.name); } catch (e) { toast(e.message); } } }, "Reload"), " ",
        h("button", { type: "button", onclick: async () => { try { await api("POST", "/plugins/" + enc(x.name) + "/reset-breaker"); toast("Breaker reset"); } catch (e) { toast(e.message); } } }, "Reset breaker")) },
    ], p.plugins || [], "No plugins loaded."),
    (p.load_errors || []).length ? h("ul", { class: "errors" }, p.load_errors.map((e) => h("li", {}, e))) : null);
  });
}

async function pageBans() {
  stopTimer();
  const r = await api("GET", "/bans");
  const kind = h("select", { id: "ban-kind" }, ["clientid", "username", "ip"].map((k) => h("option", { value: k }, k)));
  const value = h("input", { id: "ban-value", required: true });
  const minutes = h("input", { id: "ban-minutes", type: "number", min: "1", placeholder: "forever" });
  main(h("h1", {}, "Bans"),
    table([{ title: "Who", cell: (b) => b.who }, { title: "Source", cell: (b) => b.source },
      { title: "Expires in", cell: (b) => (b.expires_in_s === null ? "never" : b.expires_in_s + " s") },
      { title: "", cell: (b) => (b.source === "bans_file" ? h("span", { class: "muted" }, "in bans file") : h("button", { type: "button", onclick: async () => {
        try { await api("DELETE", "/bans/" + enc(b.kind) + "/" + enc(b.value)); route(); } catch (e) { toast(e.message); } } }, "Lift")) }],
    r.data, "Nobody is banned."),
    h("h2", {}, "Ban"),
    h("form", { onsubmit: async (e) => {
      e.preventDefault();
      const body = { kind: kind.value, value: value.value };
      if (minutes.value) body.duration_s = Number(minutes.value) * 60;
      try { const x = await api("POST", "/bans", body); toast("Banned; kicked " + x.kicked.length); route(); } catch (ex) { toast(ex.message); } } },
    h("div", { class: "row" }, h("label", { for: "ban-kind" }, "Kind", kind), h("label", { for: "ban-value", class: "grow" }, "Value", value),
      h("label", { for: "ban-minutes" }, "Minutes", minutes), h("button", { class: "primary", type: "submit" }, "Ban"))));
}

// ---- routing -------------------------------------------------------------------------------

async function route() {
  if (state.mqtt && !location.hash.startsWith("#/topics")) { state.mqtt.end(true); state.mqtt = null; }
  if (!state.csrf) {
    try {
      const s = await (await fetch("/api/v1/auth")).json();
      if (!s.username) return showLogin();
      state.csrf = s.csrf_token; state.user = s.username;
    } catch (_) { return showLogin(); }
  }
  document.getElementById("nav").hidden = false;
  document.getElementById("logout").hidden = false;
  document.getElementById("who").textContent = state.user || "";
  const hash = location.hash || "#/overview";
  const [, page, arg] = /^#\/([a-z]+)\/?(.*)$/.exec(hash) || [null, "overview", ""];
  for (const a of document.querySelectorAll("#nav a")) {
    const target = a.getAttribute("href").slice(2);
    if (target === page || (page === "client" && target === "clients") || (page === "rule" && target === "rules")) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  stopTimer();
  const pages = { overview: pageOverview, clients: pageClients, client: pageClient, topics: pageTopics,
    rules: pageRules, rule: pageRule, extensions: pageExtensions, bans: pageBans };
  try {
    await (pages[page] || pageOverview)(decodeURIComponent(arg || ""));
    document.getElementById("main").focus({ preventScroll: true });
  } catch (e) {
    if (e.status !== 401) main(h("h1", {}, "Something went wrong"), h("p", { class: "error" }, e.message));
  }
}

window.addEventListener("hashchange", route);
document.getElementById("logout").addEventListener("click", logout);
route();

// voicegw operator console. Plain JavaScript, no dependencies, no inline script (strict CSP).
//
// Sessions live in HttpOnly cookies the page never sees; it only reads the CSRF cookie and
// echoes it in X-CSRF-Token on unsafe requests. Tabs coordinate through a BroadcastChannel
// (logging out in one tab logs out all of them) and refresh the session under a Web Lock, so
// two tabs never present the same refresh token (which the server would treat as reuse and
// answer by revoking the session).
"use strict";

(() => {
  const CSRF_COOKIES = ["__Host-voicegw_csrf", "voicegw_csrf"];
  const REFRESH_MARGIN_S = 60;
  const PROVIDERS_EVERY_MS = 5000;
  const AGENTS_EVERY_MS = 30000; // a SIGHUP reload shows up within this
  const channel = "BroadcastChannel" in window ? new BroadcastChannel("voicegw-session") : null;

  let session = null; // {user, role, expires_at, permissions}
  let events = null;
  let refreshTimer = null;
  let providersTimer = null;
  let agentsTimer = null;
  let tickTimer = null;
  let liveCalls = [];

  const $ = (id) => document.getElementById(id);

  function csrfToken() {
    for (const part of document.cookie.split(";")) {
      const [name, ...rest] = part.trim().split("=");
      if (CSRF_COOKIES.includes(name)) return decodeURIComponent(rest.join("="));
    }
    return "";
  }

  function postOnce(path, body) {
    const headers = { "X-CSRF-Token": csrfToken() };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    return fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  }

  // POST an /api/v1 action; on 401 refresh once and retry (the refresh renews the CSRF cookie).
  async function post(path, body) {
    let response = await postOnce(path, body);
    if (response.status === 401 && path.startsWith("/api/") && (await refresh())) {
      response = await postOnce(path, body);
    }
    return response;
  }

  // GET an /api/v1 resource; on 401 refresh once and retry; if that fails, the session is over.
  async function get(path) {
    let response = await fetch(path, { credentials: "same-origin" });
    if (response.status === 401 && (await refresh())) {
      response = await fetch(path, { credentials: "same-origin" });
    }
    if (response.status === 401) {
      signedOut(true);
      return null;
    }
    return response.ok ? response.json() : null;
  }

  async function currentSession() {
    const response = await fetch("/auth/session", { credentials: "same-origin" });
    return response.ok ? response.json() : null;
  }

  // Refresh under a lock shared by every tab. Whoever gets the lock first refreshes; a tab
  // that waited finds a fresh session already in place and uses it instead.
  async function refresh() {
    const run = async () => {
      const now = Date.now() / 1000;
      const existing = await currentSession();
      if (existing && existing.expires_at - now > REFRESH_MARGIN_S) return existing;
      if (!csrfToken()) return null; // no session to refresh
      const response = await post("/auth/refresh");
      if (!response.ok) return null;
      const fresh = await response.json();
      if (channel) channel.postMessage({ type: "refreshed" });
      return fresh;
    };
    const result = navigator.locks ? await navigator.locks.request("voicegw-refresh", run) : await run();
    if (result) signedIn(result);
    return result;
  }

  function scheduleRefresh() {
    clearTimeout(refreshTimer);
    if (!session) return;
    const wait = Math.max(5, session.expires_at - Date.now() / 1000 - REFRESH_MARGIN_S);
    refreshTimer = setTimeout(() => refresh().then((s) => s || signedOut(true)), wait * 1000);
  }

  function can(permission) {
    return session && session.permissions.includes(permission);
  }

  function signedIn(newSession) {
    const wasOut = !session;
    session = newSession;
    $("who-name").textContent = session.user;
    $("who-role").textContent = session.role;
    $("who").hidden = false;
    $("login-view").hidden = true;
    $("app-view").hidden = false;
    document.body.dataset.state = "signed-in";
    for (const panel of document.querySelectorAll("[data-permission]")) {
      panel.hidden = !can(panel.dataset.permission);
    }
    scheduleRefresh();
    if (wasOut) start();
  }

  // Back to the login form. ``local`` says whether this tab saw the session end (then it tells
  // the other tabs); a message from another tab only updates this one.
  function signedOut(local) {
    const wasIn = session !== null;
    session = null;
    stop();
    $("who").hidden = true;
    $("app-view").hidden = true;
    $("login-view").hidden = false;
    $("password").value = "";
    document.body.dataset.state = "signed-out";
    if (local && wasIn && channel) channel.postMessage({ type: "logout" });
  }

  function start() {
    if (can("calls:read")) openEvents();
    if (can("providers:read")) {
      loadProviders();
      providersTimer = setInterval(loadProviders, PROVIDERS_EVERY_MS);
    }
    if (can("agents:read")) {
      loadAgents();
      agentsTimer = setInterval(loadAgents, AGENTS_EVERY_MS);
    }
    if (can("audit:read")) loadAudit();
    if (can("security:review")) loadKeys();
    tickTimer = setInterval(renderCalls, 1000);
  }

  function stop() {
    clearTimeout(refreshTimer);
    clearInterval(providersTimer);
    clearInterval(agentsTimer);
    clearInterval(tickTimer);
    if (events) events.close();
    events = null;
    liveCalls = [];
    renderCalls();
  }

  // -- live calls over Server-Sent Events ------------------------------------------------

  function openEvents() {
    if (events) events.close();
    events = new EventSource("/api/v1/events");
    $("stream-state").textContent = "connecting";
    events.addEventListener("open", () => ($("stream-state").textContent = "live"));
    events.addEventListener("calls", (e) => {
      liveCalls = JSON.parse(e.data);
      renderCalls();
    });
    events.addEventListener("session-ended", () => {
      events.close();
      refresh().then((s) => (s ? openEvents() : signedOut(true)));
    });
    events.addEventListener("error", () => {
      $("stream-state").textContent = "reconnecting";
      if (events.readyState === EventSource.CLOSED) {
        // The server refused the stream (401): refresh, then reopen or sign out.
        refresh().then((s) => (s ? openEvents() : signedOut(true)));
      }
    });
  }

  function cell(row, text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    row.appendChild(td);
  }

  function duration(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
  }

  function renderCalls() {
    const body = $("live-calls").tBodies[0];
    body.replaceChildren();
    const now = Date.now() / 1000;
    for (const call of liveCalls) {
      const row = document.createElement("tr");
      row.dataset.callId = call.call_id;
      cell(row, call.call_id, "mono");
      cell(row, call.carrier);
      cell(row, call.provider);
      cell(row, call.state);
      cell(row, duration(now - call.started_at));
      body.appendChild(row);
    }
    $("live-count").textContent = String(liveCalls.length);
    $("no-calls").hidden = liveCalls.length > 0;
  }

  // -- providers and audit ------------------------------------------------------------------

  async function loadProviders() {
    const data = await get("/api/v1/providers");
    if (!data) return;
    const body = $("providers").tBodies[0];
    body.replaceChildren();
    for (const p of data.providers) {
      const row = document.createElement("tr");
      cell(row, p.name);
      cell(row, p.state.replace("_", "-"), `state-${p.state}`);
      cell(row, String(p.consecutive_failures));
      cell(row, p.last_failure || "—");
      body.appendChild(row);
    }
  }

  // -- agent profiles (read-only; admins may reload the file) ---------------------------------

  // A cell holding one <span> per item (text only), or "—" when there is none.
  function listCell(row, items, className) {
    const td = document.createElement("td");
    if (className) td.className = className;
    if (items.length === 0) td.textContent = "—";
    for (const [text, title] of items) {
      const span = document.createElement("span");
      span.className = "item";
      span.textContent = text;
      if (title) span.title = title;
      td.appendChild(span);
    }
    row.appendChild(td);
    return td;
  }

  function when(at) {
    return new Date(at * 1000).toISOString().replace("T", " ").slice(0, 19);
  }

  function renderAgents(data) {
    $("agents-count").textContent = String(data.count);
    $("agents-source").textContent =
      data.source === "file" ? "from the agents file" : "built in (from the settings: no agents file)";
    $("agents-digest").textContent = data.digest.slice(0, 12);
    const last = data.last_reload;
    const lastText = !last
      ? "not reloaded since start"
      : last.ok
        ? `last reload ${when(last.at)} UTC: applied`
        : `last reload ${when(last.at)} UTC: refused (${last.problems} problem${last.problems === 1 ? "" : "s"}), the profiles in force stay`;
    $("agents-last-reload").textContent = lastText;
    $("agents-last-reload").className = last && !last.ok ? "error" : "";

    const body = $("agents").tBodies[0];
    body.replaceChildren();
    for (const a of data.agents) {
      const row = document.createElement("tr");
      row.dataset.agent = a.name;
      const name = document.createElement("td");
      name.textContent = a.name;
      if (a.default) {
        const badge = document.createElement("span");
        badge.className = "badge default-agent";
        badge.textContent = "default";
        badge.title = "serves every number no other agent lists";
        name.append(" ", badge);
      }
      row.appendChild(name);
      listCell(row, a.numbers.map((n) => [n]), "mono numbers");
      listCell(row, a.providers.map((p, i) => [i === 0 ? p : `→ ${p}`]), "providers");
      const tools = a.tools.map((t) => [t.name, `${t.kind} tool, timeout ${t.timeout_s} s`]);
      if (a.transfer.length) tools.push(["transfer_call", "built in"]);
      if (a.end_call) tools.push(["end_call", "built in"]);
      listCell(row, tools, "mono tools");
      listCell(row, a.transfer.map((k) => [k]), "transfer");
      const greeting = document.createElement("td");
      greeting.className = "greeting";
      greeting.textContent = a.greeting || "—";
      if (a.instructions) {
        const details = document.createElement("details");
        const summary = document.createElement("summary");
        summary.textContent = "instructions";
        const text = document.createElement("p");
        text.textContent = a.instructions;
        details.append(summary, text);
        greeting.appendChild(details);
      }
      row.appendChild(greeting);
      body.appendChild(row);
    }
  }

  async function loadAgents() {
    const data = await get("/api/v1/agents");
    if (data) renderAgents(data);
  }

  // Reload the agents file: applied (the table shows the new profiles) or refused (the problems
  // listed, as text; the profiles in force stay).
  async function reloadAgents() {
    const button = $("agents-reload");
    const result = $("agents-reload-result");
    const problems = $("agents-problems");
    button.disabled = true;
    result.textContent = "reloading…";
    result.className = "muted";
    problems.replaceChildren();
    problems.hidden = true;
    try {
      const response = await post("/api/v1/agents/reload");
      const data = response.headers.get("content-type")?.startsWith("application/json")
        ? await response.json()
        : null;
      if (response.ok && data && data.ok) {
        renderAgents(data);
        result.textContent = `Reloaded: ${data.count} agent${data.count === 1 ? "" : "s"} in force.`;
        result.className = "ok";
        return;
      }
      if (response.status === 422 && data && Array.isArray(data.problems)) {
        result.textContent = "Refused: the file has problems; the profiles in force stay.";
        for (const problem of data.problems) {
          const li = document.createElement("li");
          li.textContent = String(problem);
          problems.appendChild(li);
        }
        problems.hidden = data.problems.length === 0;
      } else {
        result.textContent =
          response.status === 403 ? "Refused: reloading needs the admin role." : `Reload failed (HTTP ${response.status}).`;
      }
      result.className = "error";
      await loadAgents(); // the last reload's outcome
    } catch {
      result.textContent = "Reload failed: the gateway did not answer.";
      result.className = "error";
    } finally {
      button.disabled = false;
    }
  }

  // Key ages from /api/v1/security/keys: the same figures as voicegw_key_age_seconds and
  // voicegw_key_rotation_due_seconds. Due within 14 days is flagged, overdue stands out.
  async function loadKeys() {
    const data = await get("/api/v1/security/keys");
    if (!data) return;
    const notice = data.policy.notice_days * 86400;
    const body = $("keys").tBodies[0];
    body.replaceChildren();
    for (const k of data.kinds) {
      const row = document.createElement("tr");
      row.dataset.kind = k.kind;
      const due = k.rotation_due_in_s;
      const state = due === null ? "" : due < 0 ? "key-overdue" : due <= notice ? "key-due-soon" : "key-ok";
      cell(row, k.kind);
      cell(row, k.oldest_key_id, "mono");
      cell(row, (k.age_s / 86400).toFixed(1));
      cell(row, due === null ? "—" : (due / 86400).toFixed(1), state);
      cell(row, String(k.active));
      cell(row, String(k.retired));
      body.appendChild(row);
    }
  }

  async function loadAudit() {
    const params = new URLSearchParams();
    for (const [name, id] of [["action", "audit-action"], ["actor", "audit-actor"], ["outcome", "audit-outcome"]]) {
      const value = $(id).value.trim();
      if (value) params.set(name, value);
    }
    params.set("limit", "100");
    const data = await get(`/api/v1/audit?${params}`);
    if (!data) return;
    const body = $("audit").tBodies[0];
    body.replaceChildren();
    for (const e of data.events) {
      const row = document.createElement("tr");
      cell(row, String(e.seq));
      cell(row, new Date(e.at * 1000).toISOString().replace("T", " ").slice(0, 19));
      cell(row, e.action, "mono");
      cell(row, e.outcome);
      cell(row, e.actor);
      cell(row, e.entity_type ? `${e.entity_type}:${e.entity_id || ""}` : "");
      body.appendChild(row);
    }
  }

  // -- wiring ---------------------------------------------------------------------------------

  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("login-error").hidden = true;
    $("login-button").disabled = true;
    try {
      const response = await fetch("/auth/login", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ username: $("username").value, password: $("password").value }),
      });
      if (!response.ok) {
        $("login-error").textContent =
          response.status === 401 ? "Wrong user name or password, or the account is locked for a while." : "Sign-in failed.";
        $("login-error").hidden = false;
        return;
      }
      $("password").value = "";
      signedIn(await response.json());
      if (channel) channel.postMessage({ type: "login" });
    } finally {
      $("login-button").disabled = false;
    }
  });

  $("logout").addEventListener("click", async () => {
    await post("/auth/logout");
    signedOut(true);
  });

  $("logout-all").addEventListener("click", async () => {
    await post("/auth/logout-all");
    signedOut(true);
  });

  $("agents-reload").addEventListener("click", reloadAgents);

  $("audit-form").addEventListener("submit", (event) => {
    event.preventDefault();
    loadAudit();
  });

  if (channel) {
    channel.addEventListener("message", async (event) => {
      const type = event.data && event.data.type;
      if (type === "logout") {
        signedOut(false);
      } else if (type === "login" || type === "refreshed") {
        const current = await currentSession();
        if (current) signedIn(current);
      }
    });
  }

  // On load: the session from the cookies, refreshed if the access token has lapsed.
  (async () => {
    const current = (await currentSession()) || (await refresh());
    if (current) signedIn(current);
    else signedOut(false);
  })();
})();

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
  const CALL_EVERY_MS = 2000; // an open call's page follows a live call this often
  const HISTORY_PAGE = 25;
  const CALL_HASH = /^#(call_[A-Za-z0-9_-]{1,64})$/;
  const channel = "BroadcastChannel" in window ? new BroadcastChannel("voicegw-session") : null;

  let session = null; // {user, role, expires_at, permissions}
  let events = null;
  let refreshTimer = null;
  let providersTimer = null;
  let agentsTimer = null;
  let tickTimer = null;
  let liveCalls = [];
  let agentsByName = new Map(); // name -> summary (transfer keys for the call page)
  let historyQuery = ""; // the filters of the pages shown
  let historyCursor = null;
  let historyGeneration = 0;
  let openCallId = null;
  let openCallData = null; // the last GET /api/v1/calls/{id} body
  let callTimer = null;

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

  // GET an /api/v1 resource; on 401 refresh once and retry; if that fails, the session is over
  // (null). Other statuses are the caller's to read.
  async function getResponse(path) {
    let response = await fetch(path, { credentials: "same-origin" });
    if (response.status === 401 && (await refresh())) {
      response = await fetch(path, { credentials: "same-origin" });
    }
    if (response.status === 401) {
      signedOut(true);
      return null;
    }
    return response;
  }

  // The body of a successful GET, or null.
  async function get(path) {
    const response = await getResponse(path);
    return response && response.ok ? response.json() : null;
  }

  // What an API error says ({"error": "..."}), or its HTTP status.
  async function errorText(response) {
    try {
      if (response.headers.get("content-type")?.startsWith("application/json")) {
        const data = await response.json();
        if (data && typeof data.error === "string") return data.error;
      }
    } catch {
      // not JSON after all: the status says enough
    }
    return `HTTP ${response.status}`;
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
    if (can("calls:read")) {
      loadHistory(false);
      const linked = CALL_HASH.exec(location.hash);
      if (linked) openCallPage(linked[1]);
    }
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
    closeCallPage();
    $("history").tBodies[0].replaceChildren();
    $("history-more").hidden = true;
    $("dial-result").hidden = true;
    agentsByName = new Map();
    $("agent-names").replaceChildren();
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
      if (openCallId) loadCall(); // the open call may have changed state or ended
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
      callCell(row, call.call_id);
      cell(row, call.agent || "—");
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
    agentsByName = new Map(data.agents.map((a) => [a.name, a]));
    $("agent-names").replaceChildren(
      ...data.agents.map((a) => {
        const option = document.createElement("option");
        option.value = a.name;
        return option;
      }),
    );
    if (openCallData) renderCallActions(openCallData.call);
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
      // Where its calls and transfers may go (E.164 prefixes; the toll-fraud guard).
      const calling = a.calling.allowed_destinations.map((p) => [
        p,
        a.calling.defaulted ? "allowed destination (from the agent's own numbers)" : "allowed destination",
      ]);
      for (const p of a.calling.allow_denied_prefixes) calling.push([`lifts ${p}`, "deny-list entry lifted"]);
      listCell(row, calling, "mono calling");
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


  // -- call history, the call page and its commands, placing calls ----------------------------

  // A cell with the call id as a button that opens the call page.
  function callCell(row, callId) {
    const td = document.createElement("td");
    td.className = "mono";
    const button = document.createElement("button");
    button.type = "button";
    button.className = "link open-call";
    button.textContent = callId;
    button.addEventListener("click", () => openCallPage(callId));
    td.appendChild(button);
    row.appendChild(td);
  }

  function historyFilters() {
    const params = new URLSearchParams();
    for (const [name, id] of [
      ["agent", "history-agent"],
      ["carrier", "history-carrier"],
      ["state", "history-state"],
      ["outcome", "history-outcome"],
    ]) {
      const value = $(id).value.trim();
      if (value) params.set(name, value);
    }
    params.set("limit", String(HISTORY_PAGE));
    return params;
  }

  // The first page for the filters in the form, or (``more``) the next page of those shown.
  async function loadHistory(more) {
    const params = more ? new URLSearchParams(historyQuery) : historyFilters();
    if (more) params.set("cursor", historyCursor);
    else historyQuery = params.toString();
    const generation = ++historyGeneration;
    const moreButton = $("history-more");
    moreButton.disabled = true;
    const error = $("history-error");
    let response;
    try {
      response = await getResponse(`/api/v1/calls?${params}`);
    } catch {
      response = undefined;
    } finally {
      moreButton.disabled = false;
    }
    if (generation !== historyGeneration || response === null) return; // superseded, or signed out
    if (!response || !response.ok) {
      error.textContent = `The call history did not load: ${response ? await errorText(response) : "the gateway did not answer"}.`;
      error.hidden = false;
      return;
    }
    error.hidden = true;
    const data = await response.json();
    const body = $("history").tBodies[0];
    if (!more) body.replaceChildren();
    for (const c of data.recent) {
      const row = document.createElement("tr");
      row.dataset.callId = c.call_id;
      callCell(row, c.call_id);
      cell(row, when(c.started_at));
      cell(row, c.agent || "—");
      cell(row, c.carrier);
      cell(row, c.duration_s === null ? "—" : duration(c.duration_s));
      cell(row, c.ended_at === null ? "open" : c.outcome || "—", c.ended_at === null ? "state-open" : "");
      body.appendChild(row);
    }
    historyCursor = data.next;
    moreButton.hidden = !data.next;
    $("history-empty").hidden = body.rows.length > 0;
  }

  function openCallPage(callId) {
    if (openCallId !== callId) {
      openCallData = null;
      $("call-fields").replaceChildren();
      $("call-timeline").replaceChildren();
      $("call-transcript").replaceChildren();
      $("call-state").textContent = "";
      $("call-action-result").hidden = true;
      $("call-actions").hidden = true;
    }
    openCallId = callId;
    $("call-id").textContent = callId;
    $("call-panel").hidden = false;
    if (location.hash !== `#${callId}`) history.replaceState(null, "", `#${callId}`);
    $("call-panel").scrollIntoView({ block: "nearest" });
    return loadCall();
  }

  function closeCallPage() {
    clearTimeout(callTimer);
    openCallId = null;
    openCallData = null;
    $("call-panel").hidden = true;
    if (CALL_HASH.test(location.hash)) history.replaceState(null, "", location.pathname + location.search);
  }

  async function loadCall() {
    const callId = openCallId;
    if (!callId) return;
    clearTimeout(callTimer);
    let response;
    try {
      response = await getResponse(`/api/v1/calls/${encodeURIComponent(callId)}`);
    } catch {
      response = undefined;
    }
    if (callId !== openCallId || response === null) return;
    if (!response || !response.ok) {
      const reason = !response
        ? "the gateway did not answer"
        : response.status === 404
          ? "no such call"
          : await errorText(response);
      $("call-state").textContent = reason;
      $("call-actions").hidden = true;
      if (response && response.status !== 404) callTimer = setTimeout(loadCall, CALL_EVERY_MS);
      return;
    }
    const data = await response.json();
    if (callId !== openCallId) return;
    openCallData = data;
    renderCall(data);
    // Follow the call until it has ended and its record is closed.
    if (data.call.state !== "ended" || !data.call.ended_at) callTimer = setTimeout(loadCall, CALL_EVERY_MS);
  }

  function renderCall(data) {
    const call = data.call;
    $("call-state").textContent = call.state;
    const fields = $("call-fields");
    fields.replaceChildren();
    const field = (label, value) => {
      if (value === undefined || value === null || value === "") return;
      const dt = document.createElement("dt");
      dt.textContent = label;
      const dd = document.createElement("dd");
      dd.textContent = value;
      dd.dataset.field = label.toLowerCase().replace(/ /g, "-");
      fields.append(dt, dd);
    };
    field("Agent", call.agent);
    field("Carrier", call.carrier);
    field("Provider", call.provider);
    field("Providers", (call.providers || []).join(" → "));
    field("From", call.from);
    field("To", call.to);
    field("Started", call.started_at ? `${when(call.started_at)} UTC` : null);
    field("Ended", call.ended_at ? `${when(call.ended_at)} UTC` : null);
    field("Duration", call.duration_s === null || call.duration_s === undefined ? null : duration(call.duration_s));
    field("Outcome", call.outcome);
    field("Failovers", call.failovers ? String(call.failovers) : null);
    field("Transferred to", call.transfer_to);
    field("Recorded", call.recorded ? "yes" : null);
    field("Replica", call.replica);
    renderCallActions(call);

    const timeline = $("call-timeline");
    timeline.replaceChildren();
    for (const e of data.timeline) {
      const li = document.createElement("li");
      li.dataset.action = e.action;
      const action = document.createElement("strong");
      action.textContent = e.action;
      li.append(`${when(e.at)} `, action, ` ${e.outcome}${e.actor ? ` by ${e.actor}` : ""}`);
      const detail = Object.entries(e.detail || {}).map(
        ([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`,
      );
      if (detail.length) {
        const span = document.createElement("span");
        span.className = "detail";
        span.textContent = ` (${detail.join(", ")})`;
        li.appendChild(span);
      }
      timeline.appendChild(li);
    }
    $("call-no-timeline").hidden = data.timeline.length > 0;

    // Only the roles that may read a person's data get the transcript at all.
    $("call-transcript-part").hidden = !Array.isArray(data.transcript);
    const transcript = $("call-transcript");
    transcript.replaceChildren();
    for (const turn of data.transcript || []) {
      const li = document.createElement("li");
      li.dataset.role = turn.role;
      const who = document.createElement("span");
      who.className = "who";
      who.textContent = turn.role === "caller" ? "Caller:" : "Agent:";
      const said = document.createElement("span");
      said.className = "said";
      said.textContent = turn.text;
      li.append(who, " ", said);
      transcript.appendChild(li);
    }
    $("call-no-transcript").hidden = (data.transcript || []).length > 0;
  }

  // "Hang up" and one "Transfer to <key>" per key of the call's agent, while the call is live.
  function renderCallActions(call) {
    const live = call.state !== "ended";
    $("call-actions").hidden = !live;
    const keys = live ? agentsByName.get(call.agent)?.transfer || [] : [];
    const transfers = $("call-transfers");
    const shown = JSON.stringify([call.call_id, keys]);
    if (transfers.dataset.shown === shown) return; // keep the buttons (and any focus) as they are
    transfers.dataset.shown = shown;
    transfers.replaceChildren(
      ...keys.map((key) => {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "transfer";
        button.dataset.destination = key;
        button.textContent = `Transfer to ${key}`;
        button.addEventListener("click", () => command("transfer", key));
        return button;
      }),
    );
  }

  // Hang up or transfer the open call, once the operator confirms; the API's refusal is shown.
  async function command(kind, destination) {
    const callId = openCallId;
    if (!callId) return;
    const question =
      kind === "hangup" ? `Hang up call ${callId}?` : `Transfer call ${callId} to ${destination}?`;
    if (!window.confirm(question)) return;
    const result = $("call-action-result");
    const buttons = $("call-actions").querySelectorAll("button");
    for (const b of buttons) b.disabled = true;
    result.textContent = kind === "hangup" ? "Hanging up…" : `Transferring to ${destination}…`;
    result.className = "muted";
    result.hidden = false;
    try {
      const path = `/api/v1/calls/${encodeURIComponent(callId)}/${kind}`;
      const response = await post(path, kind === "transfer" ? { destination } : undefined);
      if (response.ok) {
        result.textContent = kind === "hangup" ? "Hung up." : `Transferred to ${destination}.`;
        result.className = "ok";
      } else {
        result.textContent = `Refused: ${await errorText(response)}.`;
        result.className = "error";
      }
    } catch {
      result.textContent = "Failed: the gateway did not answer.";
      result.className = "error";
    } finally {
      for (const b of buttons) b.disabled = false;
    }
    if (callId === openCallId) await loadCall();
  }

  // POST /api/v1/calls from the form; the new call's id, or the API's reason for refusing.
  async function placeCall() {
    const body = {
      to: $("dial-to").value.trim(),
      from: $("dial-from").value.trim(),
      agent: $("dial-agent").value.trim(),
    };
    if ($("dial-carrier").value) body.carrier = $("dial-carrier").value;
    if ($("dial-amd").checked) body.machine_detection = true;
    const button = $("dial-button");
    const result = $("dial-result");
    button.disabled = true;
    result.replaceChildren("Calling…");
    result.className = "muted";
    result.hidden = false;
    try {
      const response = await post("/api/v1/calls", body);
      if (response.status === 201) {
        const placed = await response.json();
        result.replaceChildren("Call placed: ");
        if (can("calls:read")) {
          const open = document.createElement("button");
          open.type = "button";
          open.className = "link mono";
          open.id = "dial-call-id";
          open.textContent = placed.call_id;
          open.addEventListener("click", () => openCallPage(placed.call_id));
          result.appendChild(open);
        } else {
          const id = document.createElement("span");
          id.className = "mono";
          id.id = "dial-call-id";
          id.textContent = placed.call_id;
          result.appendChild(id);
        }
        result.className = "ok";
        return;
      }
      const wait = response.headers.get("retry-after");
      result.textContent = `Refused: ${await errorText(response)}${wait ? ` (try again in ${wait} s)` : ""}.`;
      result.className = "error";
    } catch {
      result.textContent = "Failed: the gateway did not answer.";
      result.className = "error";
    } finally {
      button.disabled = false;
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

  $("history-form").addEventListener("submit", (event) => {
    event.preventDefault();
    loadHistory(false);
  });
  $("history-more").addEventListener("click", () => loadHistory(true));
  $("call-close").addEventListener("click", closeCallPage);
  $("call-hangup").addEventListener("click", () => command("hangup"));
  $("dial-form").addEventListener("submit", (event) => {
    event.preventDefault();
    placeCall();
  });
  window.addEventListener("hashchange", () => {
    const linked = CALL_HASH.exec(location.hash);
    if (linked && session && can("calls:read")) openCallPage(linked[1]);
  });

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

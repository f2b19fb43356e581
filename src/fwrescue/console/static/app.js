// fwrescue console dashboard: plain JS, no build step. Views: #/ fleet, #/node/ID, #/policy,
// #/accounts (operators).
"use strict";
const view = document.getElementById("view");
let me = { role: "readonly" };

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "onclick" || k === "onsubmit") e[k] = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return e;
}

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const resp = await fetch(path, opts);
  if (resp.status === 401) { location.href = "/login"; throw new Error("log in"); }
  const data = await resp.json();
  if (!resp.ok) throw new Error(data.error || resp.statusText);
  return data;
}

function bar(percent) { const b = el("span", { class: "bar" }, el("span")); b.firstChild.style.width = percent + "%"; return b; }

function table(headers, rows, id) {
  return el("table", id ? { id } : {}, el("thead", {}, el("tr", {}, ...headers.map(h => el("th", {}, h)))),
            el("tbody", {}, ...rows));
}

async function fleetView() {
  const data = await api("/api/fleet");
  const counts = el("div", { class: "counts", id: "counts" });
  for (const [what, byValue] of Object.entries(data.counts)) {
    counts.append(table(["by " + what, "nodes"], Object.entries(byValue).map(
      ([k, n]) => el("tr", {}, el("td", {}, k), el("td", {}, String(n))))));
  }
  const healing = data.nodes.filter(n => n.healing);
  const recovered = data.nodes.filter(n => n.last_operation && n.last_operation.kind === "recovery");
  const lastOp = op => op ? `${op.kind} ${op.state}` + (op.donor ? ` via ${op.donor} (${op.donor_kind})` : "") : "";
  const rows = data.nodes.map(n => el("tr", { class: "state-" + n.state, "data-node": n.id },
    el("td", {}, el("a", { href: "#/node/" + encodeURIComponent(n.id) }, n.id)),
    el("td", {}, n.board || "?"), el("td", { class: "state" }, n.state),
    el("td", {}, n.targets.map(t => `${t.name} ${t.version} (sv ${t.security_version}, floor ${t.floor})`).join("; ")),
    el("td", {}, n.healing ? el("span", {}, bar(n.healing.percent), ` ${n.healing.percent}% ${n.healing.message || ""}`) :
      (n.reachable ? "" : (n.last_error || "unreachable"))),
    el("td", { class: "last-op" }, lastOp(n.last_operation))));
  view.replaceChildren(el("h2", {}, "Fleet"), counts,
    el("h3", {}, `Healing now (${healing.length})`),
    el("ul", { id: "healing" }, ...healing.map(n => el("li", {}, `${n.id}: ${n.healing.kind} ${n.healing.percent}% — ${n.healing.message || ""}`))),
    el("h3", {}, `Recovered (${recovered.length})`),
    el("ul", { id: "recovered" }, ...recovered.map(n => el("li", { "data-node": n.id },
      el("a", { href: "#/node/" + encodeURIComponent(n.id) }, n.id), ` ${n.last_operation.target || ""} ` +
      (n.last_operation.state === "Completed" ? `recovered from ${n.last_operation.donor || "?"} (${n.last_operation.donor_kind || "?"})` :
        `recovery ${n.last_operation.state}`) + (n.last_operation.ended_at ? ` at ${n.last_operation.ended_at}` : "") + " — transcript"))),
    table(["node", "board", "state", "firmware", "activity", "last operation"], rows, "nodes"));
}

function describe(e) {
  const o = e.offer || {};
  switch (e.event) {
    case "start": return `started ${e.kind || ""}: ${e.reason || ""}`;
    case "SolicitSent": return `solicited offers (attempt ${e.attempt ?? "?"})`;
    case "OfferReceived": return `offer from ${o.donor_id} (${o.donor_kind}) version ${o.version}, security version ${o.security_version}, load ${o.load}`;
    case "OfferRejected": return `offer from ${o.donor_id} rejected: ${e.reason || ""}`;
    case "DonorSelected": return `chose donor ${o.donor_id} (${o.donor_kind}, version ${o.version}) — why: ${e.reason || ""}` +
      (Array.isArray(e.ranked) ? `; ranking: ${e.ranked.join(", ")}` : "");
    case "DonorAcked": return `donor ${o.donor_id} reserved a slot and issued a one-time token`;
    case "AcceptTimedOut": return `donor ${o.donor_id} did not acknowledge: ${e.reason || ""}`;
    case "DonorNaked": return `donor ${o.donor_id || e.donor_id || ""} refused: ${e.reason || ""}`;
    case "manifest verified": return `manifest from ${e.donor} verified (signature, board, floor)`;
    case "declined": return `declined ${e.donor}: ${e.reason} (blame: ${e.blame})`;
    case "donor failed": return `donor ${e.donor} failed: ${e.reason}`;
    case "transferred": return `transferred ${e.bytes} bytes from ${e.donor}, every chunk verified`;
    case "staged": return `staged ${e.version} from ${e.origin}`;
    case "host held": return `host held (${e.mode})`;
    case "flashed": return `flashed (attempt ${e.attempt}, ${e.erased} blocks erased)`;
    case "read-back verified": return `read-back verified (sha256 ${String(e.sha256 || "").slice(0, 16)}…)`;
    case "boot check": return `boot check: ${e.booted ? "booted" : "did NOT boot"} after ${e.seconds} s`;
    case "done": return `done: ${e.version} installed, booted ${e.booted}`;
    case "GaveUp": return `gave up: ${e.reason || ""}`;
    default: return Object.entries(e).filter(([k]) => k !== "t" && k !== "event")
      .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ");
  }
}

async function nodeView(id) {
  const n = await api("/api/nodes/" + encodeURIComponent(id));
  const parts = [el("h2", {}, `Node ${n.id}`),
    el("p", {}, `board ${n.board || "?"} · power ${n.power || "?"} · health ${n.health || "?"} · ` +
      (n.reachable ? "reachable" : `unreachable: ${n.last_error || ""}`) + ` · policy v${n.policy_version}`),
    table(["target", "version", "security version", "floor", "baseline", "health", "state"],
      n.targets.map(t => el("tr", {}, ...[t.name, t.version, t.security_version, t.floor, t.baseline || "-", t.health, t.state].map(v => el("td", {}, String(v))))), "targets"),
    el("h3", {}, "Operations")];
  parts.push(table(["operation", "kind", "state", "progress", "donor", "started", "message"],
    n.operations.map(op => el("tr", {}, el("td", {}, op.op_id), el("td", {}, op.kind), el("td", {}, op.state),
      el("td", {}, bar(op.percent), ` ${op.percent}%`), el("td", { class: "donor" }, op.donor ? `${op.donor} (${op.donor_kind})` : "-"),
      el("td", {}, op.started_at || ""), el("td", {}, op.message || ""))), "operations"));
  for (const op of n.operations.slice(0, 3)) {
    const t = await api(`/api/nodes/${encodeURIComponent(n.id)}/operations/${encodeURIComponent(op.op_id)}`);
    const t0 = t.entries.length ? t.entries[0].t : 0;
    parts.push(el("h4", {}, `Transcript of ${op.op_id} (${op.kind}, ${op.state})`),
      el("ol", { class: "transcript", "data-op": op.op_id }, ...t.entries.map(e => el("li", {},
        el("span", {}, `+${(e.t - t0).toFixed(2)} s `), el("span", { class: "ev" }, e.event), " — ", describe(e)))));
  }
  view.replaceChildren(...parts);
}

async function policyView() {
  const data = await api("/api/policies");
  if (!document.getElementById("policy-tables")) policyForms();
  const policies = table(["board", "version", "targets", "uploaded by"], data.policies.map(p =>
    el("tr", {}, el("td", {}, p.board), el("td", {}, String(p.version)), el("td", {}, p.summary), el("td", {}, p.uploaded_by))), "policies");
  const rollouts = table(["rollout", "board", "policy", "state", "stage", "failures", "deliveries", ""], data.rollouts.map(r =>
    el("tr", { "data-rollout": String(r.id) }, el("td", {}, String(r.id)), el("td", {}, r.board), el("td", {}, "v" + r.version),
      el("td", { class: "rollout-state" }, r.state + (r.reason ? ` (${r.reason})` : "")), el("td", {}, String(r.stage)),
      el("td", {}, String(r.failures)),
      el("td", {}, r.deliveries.map(d => `${d.node_id}: ${d.state}`).join(", ")),
      el("td", {}, ...(me.role !== "operator" ? [] : r.state === "running" ? [el("button", { onclick: () => act(r.id, "pause") }, "Pause")] :
        (r.state === "paused" || r.state === "halted") ? [el("button", { onclick: () => act(r.id, "resume") }, "Resume")] : [])))), "rollouts");
  document.getElementById("policy-tables").replaceChildren(el("h3", {}, "Policies"), policies, el("h3", {}, "Rollouts"), rollouts);
}

function policyForms() {
  const msg = el("p", { id: "policy-message" });
  const upload = el("form", { id: "upload-form", onsubmit: async ev => {
    ev.preventDefault();
    const file = document.getElementById("policy-file").files[0];
    const text = file ? await file.text() : document.getElementById("policy-text").value;
    try { const r = await api("/api/policies", { document: text }); msg.textContent = `stored policy v${r.version} for ${r.board}`; msg.className = "ok"; }
    catch (e) { msg.textContent = e.message; msg.className = "error"; }
  } }, el("fieldset", {}, el("legend", {}, "Upload a signed policy (baseline and floor; signed with fwrescue policy sign)"),
      el("input", { type: "file", id: "policy-file", accept: ".json" }), el("br"),
      el("textarea", { id: "policy-text", rows: "3", placeholder: "…or paste the signed document" }),
      el("button", { type: "submit", id: "upload" }, "Upload")));
  const start = el("form", { id: "rollout-form", onsubmit: async ev => {
    ev.preventDefault();
    const f = ev.target;
    try {
      const r = await api("/api/rollouts", { board: f.board.value, version: Number(f.version.value),
        fraction: Number(f.fraction.value), halt_after: Number(f.halt_after.value) });
      msg.textContent = `rollout ${r.id} started`; msg.className = "ok";
    } catch (e) { msg.textContent = e.message; msg.className = "error"; }
  } }, el("fieldset", {}, el("legend", {}, "Start a staged rollout"),
      el("label", {}, "board ", el("input", { name: "board", id: "rollout-board" })),
      el("label", {}, " version ", el("input", { name: "version", id: "rollout-version", size: "4" })),
      el("label", {}, " first stage fraction ", el("input", { name: "fraction", value: "0.25", size: "4" })),
      el("label", {}, " halt after failures ", el("input", { name: "halt_after", value: "1", size: "3" })),
      el("button", { type: "submit", id: "start-rollout" }, "Start")));
  view.replaceChildren(el("h2", {}, "Fleet policy"), msg, ...(me.role === "operator" ? [upload, start] : []),
    el("div", { id: "policy-tables" }));
}

async function accountsView() {
  if (me.role !== "operator") { view.replaceChildren(el("h2", {}, "Accounts"), el("p", {}, "The operator role is needed to manage accounts.")); return; }
  const data = await api("/api/accounts");
  if (!document.getElementById("accounts-table")) {
    const msg = el("p", { id: "account-message" });
    const form = el("form", { id: "account-form", onsubmit: async ev => {
      ev.preventDefault();
      const f = ev.target;
      try {
        const r = await api("/api/accounts", { username: f.username.value, password: f.password.value, role: f.role.value });
        msg.textContent = `account ${r.username} (${r.role}) created`; msg.className = "ok"; f.reset();
      } catch (e) { msg.textContent = e.message; msg.className = "error"; }
      render();
    } }, el("fieldset", {}, el("legend", {}, "New console account"),
        el("label", {}, "name ", el("input", { name: "username", id: "account-name", maxlength: "32" })),
        el("label", {}, " password ", el("input", { name: "password", id: "account-password", type: "password", autocomplete: "new-password" })),
        el("label", {}, " role ", el("select", { name: "role", id: "account-role" }, el("option", { value: "readonly" }, "readonly"), el("option", { value: "operator" }, "operator"))),
        el("button", { type: "submit", id: "create-account" }, "Create")));
    view.replaceChildren(el("h2", {}, "Accounts"), msg, form, el("div", { id: "accounts-table" }));
  }
  const msg = document.getElementById("account-message");
  document.getElementById("accounts-table").replaceChildren(table(["account", "role", ""], data.accounts.map(a =>
    el("tr", { "data-account": a.username }, el("td", {}, a.username), el("td", {}, a.role),
      el("td", {}, a.username === me.username ? "(you)" : el("button", { onclick: async () => {
        try { await api(`/api/accounts/${encodeURIComponent(a.username)}/delete`, {}); msg.textContent = `account ${a.username} deleted`; msg.className = "ok"; }
        catch (e) { msg.textContent = e.message; msg.className = "error"; }
        render();
      } }, "Delete")))), "accounts"));
}

async function act(id, action) {
  try { await api(`/api/rollouts/${id}/${action}`, {}); } catch (e) { alert(e.message); }
  render();
}

let rendering = false, again = false;
async function render() {
  if (rendering) { again = true; return; }
  rendering = true;
  try {
    const hash = location.hash || "#/";
    if (hash.startsWith("#/node/")) await nodeView(decodeURIComponent(hash.slice(7)));
    else if (hash === "#/policy") await policyView();
    else if (hash === "#/accounts") await accountsView();
    else await fleetView();
  } catch (e) { console.error(e); }
  rendering = false;
  if (again) { again = false; render(); }
}

window.addEventListener("hashchange", render);
api("/api/whoami").then(w => { me = w; document.getElementById("who").textContent = `${w.username} (${w.role})`; render(); });
const live = new EventSource("/api/events");
live.addEventListener("changed", () => { document.getElementById("live").className = "on"; render(); });
live.onerror = () => { document.getElementById("live").className = ""; };

// paystream admin console: plain JS, no build step. It only calls the public /v1 API
// with the admin's bearer token (kept in sessionStorage, gone when the tab closes).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { token: sessionStorage.getItem("ps_token"), cursor: null, current: null, poll: null };

// ------------------------------------------------------------------ helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function badge(text, extra) {
  return el("span", { class: "badge " + (extra || text || ""), text: text || "?" });
}

function formatAmount(text, currency) {
  const [w, f] = String(text).split(".");
  const neg = w.startsWith("-");
  const whole = w.replace("-", "").replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  return (neg ? "-" : "") + whole + (f !== undefined ? "." + f : "") + (currency ? " " + currency : "");
}

function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toISOString().replace("T", " ").slice(0, 19) + "Z";
}

function flash(text, isError) {
  const f = $("flash");
  f.textContent = text;
  f.className = isError ? "error" : "";
}

async function api(method, path, body) {
  const headers = {};
  if (state.token) headers.Authorization = "Bearer " + state.token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await resp.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch (_) { data = { detail: text }; }
  }
  if (resp.status === 401 && state.token) logout("Your session ended; sign in again.");
  if (!resp.ok) {
    const err = new Error((data && (data.detail || data.title)) || "HTTP " + resp.status);
    err.status = resp.status;
    err.code = data && data.code;
    throw err;
  }
  return data;
}

// ------------------------------------------------------------------ session

async function login(ev) {
  ev.preventDefault();
  $("login-error").textContent = "";
  $("login-submit").disabled = true;
  try {
    state.token = null;
    const tok = await api("POST", "/v1/auth/login", { email: $("login-email").value, password: $("login-password").value });
    state.token = tok.access_token;
    const me = await api("GET", "/v1/me");
    if (me.role !== "admin") {
      state.token = null;
      throw new Error("This console is for admin users.");
    }
    sessionStorage.setItem("ps_token", state.token);
    sessionStorage.setItem("ps_who", me.email);
    $("login-password").value = "";
    enter();
  } catch (err) {
    $("login-error").textContent = err.message;
  } finally {
    $("login-submit").disabled = false;
  }
}

function logout(message) {
  state.token = null;
  sessionStorage.removeItem("ps_token");
  sessionStorage.removeItem("ps_who");
  stopPolling();
  $("app-view").hidden = true;
  $("whoami").hidden = true;
  $("login-view").hidden = false;
  $("login-error").textContent = message || "";
}

function enter() {
  $("login-view").hidden = true;
  $("app-view").hidden = false;
  $("whoami").hidden = false;
  $("who").textContent = sessionStorage.getItem("ps_who") || "";
  loadReviews(true);
}

function showTab(name) {
  for (const b of document.querySelectorAll("nav .tab")) b.classList.toggle("active", b.dataset.tab === name);
  for (const t of ["reviews", "payment", "account"]) $("tab-" + t).hidden = t !== name;
}

// ------------------------------------------------------------------ review queue

// The queue is a list like every other (object, data, has_more): the next page starts
// after the last review shown (starting_after = its id).
async function loadReviews(reset) {
  if (reset) state.cursor = null;
  const q = new URLSearchParams({ limit: "20" });
  if ($("f-state").value) q.set("status", $("f-state").value);
  if ($("f-risk").value) q.set("risk", $("f-risk").value);
  if ($("f-account").value.trim()) q.set("account", $("f-account").value.trim());
  if (state.cursor) q.set("starting_after", state.cursor);
  const body = $("reviews").tBodies[0];
  try {
    const page = await api("GET", "/v1/admin/reviews?" + q);
    if (reset) body.replaceChildren();
    for (const r of page.data) body.append(reviewRow(r));
    state.cursor = page.data.length ? page.data[page.data.length - 1].id : null;
    $("more").hidden = !(page.has_more && state.cursor);
    $("reviews-empty").hidden = body.rows.length > 0;
  } catch (err) {
    if (reset) body.replaceChildren();
    flash(err.status === 404 ? "No such account." : err.message, true);
  }
}

function reviewRow(r) {
  const rules = r.reasons.map((x) => x.rule).join(", ");
  const tr = el("tr", { class: "review", "data-alert": r.id, onclick: () => openReview(r.id) },
    el("td", { class: "when", title: when(r.detected_at), text: when(r.detected_at).slice(5, 19).replace("T", " ") }),
    el("td", {}, badge(r.risk)),
    el("td", { class: "num", text: String(r.score) }),
    el("td", { class: "num", text: formatAmount(r.amount, r.currency) }),
    el("td", { text: rules }),
    el("td", {}, badge(r.status)));
  if (state.current && state.current.id === r.id) tr.classList.add("selected");
  return tr;
}

async function openReview(alertId) {
  stopPolling();
  for (const tr of $("reviews").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.alert === alertId);
  try {
    const r = await api("GET", "/v1/admin/reviews/" + alertId);
    state.current = r;
    $("d-note").value = "";
    renderReview(r);
    $("detail").hidden = false;
    await renderParties(r);
  } catch (err) {
    flash(err.message, true);
  }
}

function renderReview(r) {
  $("d-alert").textContent = r.id;
  const st = $("d-state");
  st.textContent = r.status;
  st.className = "badge " + r.status;
  const risk = $("d-risk");
  risk.textContent = r.risk;
  risk.className = "badge " + r.risk;
  $("d-score").textContent = "score " + r.score;
  $("d-amount").textContent = formatAmount(r.amount, r.currency);
  $("d-detected").textContent = when(r.detected_at);
  $("d-payment").textContent = r.payment_id;
  $("d-decision").textContent = r.status === "open" ? "—"
    : `${r.status} by ${r.decided_by_email || r.decided_by} at ${when(r.decided_at)}${r.note ? ": “" + r.note + "”" : ""}`;
  const tb = $("d-reasons").tBodies[0];
  tb.replaceChildren(...r.reasons.map((x) => el("tr", {},
    el("td", {}, el("code", { text: x.rule })), el("td", { class: "num", text: String(x.score) }),
    el("td", { text: x.detail }))));
  $("decide").hidden = r.status !== "open";
}

async function renderParties(r) {
  let payment = null;
  try {
    payment = await api("GET", "/v1/payments/" + r.payment_id);
  } catch (err) {
    if (err.status !== 404) throw err;
  }
  const ps = $("d-payment-status");
  if (!payment) {
    ps.textContent = "not in the read model yet";
    ps.className = "badge pending";
    $("d-sender").replaceChildren(el("p", { class: "muted", text: "sender " + (r.from_account || "without a number") }));
    $("d-receiver").replaceChildren(el("p", { class: "muted", text: "receiver " + (r.to_account || "without a number") }));
    return;
  }
  const [sender, receiver] = await Promise.all([
    payment.from_account ? accountBox(payment.from_account, "Sender") : null,
    payment.to_account ? accountBox(payment.to_account, "Receiver") : null,
  ]);
  // The reversal is an event of the sender's account (TRANSFER_REVERSED of this payment).
  const reversed = payment.status === "reversed" || (sender && sender.txs.some(
    (t) => t.type === "transfer_reversed" && t.payment_id === r.payment_id));
  const status = reversed ? "reversed" : payment.status;
  ps.textContent = status;
  ps.className = "badge " + status;
  ps.dataset.status = status;
  $("d-sender").replaceChildren(sender ? sender.node : el("p", { class: "muted", text: "no sender" }));
  $("d-receiver").replaceChildren(receiver ? receiver.node : el("p", { class: "muted", text: "no receiver" }));
}

// ------------------------------------------------------------------ accounts

async function accountBox(number, role) {
  const [acct, txs, holds] = await Promise.all([
    api("GET", "/v1/accounts/" + encodeURIComponent(number)),
    api("GET", "/v1/accounts/" + encodeURIComponent(number) + "/transactions?limit=8"),
    api("GET", "/v1/accounts/" + encodeURIComponent(number) + "/holds?limit=8"),
  ]);
  const freeze = el("button", { type: "button", class: "danger", text: "Freeze", "data-action": "freeze",
    onclick: () => statusChange(number, "freeze") });
  const unfreeze = el("button", { type: "button", class: "ok", text: "Unfreeze", "data-action": "unfreeze",
    onclick: () => statusChange(number, "unfreeze") });
  const statement = el("button", { type: "button", text: "Statement (CSV)", "data-action": "statement",
    onclick: () => downloadStatement(number) });
  freeze.disabled = acct.status === "frozen";
  unfreeze.disabled = acct.status !== "frozen";
  const rows = txs.data.map((t) => el("tr", { "data-type": t.type },
    el("td", { class: "when", text: when(t.occurred_at).slice(5, 19) }),
    el("td", { text: t.type.replaceAll("_", " ") }),
    el("td", { class: "num", text: formatAmount(t.amount) }),
    el("td", { class: "num", text: formatAmount(t.balance_after) })));
  // Holds: the posted balance is what moved; what open holds reserve is not available.
  const held = acct.available !== undefined && acct.available !== acct.posted;
  const holdRows = holds.data.map((h) => el("tr", { "data-hold": h.id },
    el("td", { class: "when", text: h.expires_at ? when(h.expires_at).slice(5, 19) : "—" }),
    el("td", {}, el("code", { text: h.id.slice(0, 8) }), " to " + (h.to_account || "?")),
    el("td", { class: "num", text: formatAmount(h.amount_authorized || h.amount) })));
  const node = el("div", { class: "account", "data-number": number, "data-status": acct.status },
    el("h4", {}, el("span", { text: `${role} ${number}` }), badge(acct.status)),
    el("div", { class: "balance", text: formatAmount(acct.balance, acct.currency) }),
    held ? el("div", { class: "held", "data-available": acct.available,
      text: `available ${formatAmount(acct.available, acct.currency)} (${holds.data.length}${holds.has_more ? "+" : ""} open holds)` }) : null,
    el("div", { class: "actions" }, freeze, unfreeze, statement),
    holdRows.length ? el("table", { class: "holds" }, el("thead", {}, el("tr", {}, el("th", { text: "Hold lapses (UTC)" }),
      el("th", { text: "Hold" }), el("th", { class: "num", text: "Held" }))), el("tbody", {}, ...holdRows)) : null,
    el("table", {}, el("thead", {}, el("tr", {}, el("th", { text: "When (UTC)" }), el("th", { text: "What" }),
      el("th", { class: "num", text: acct.currency }), el("th", { class: "num", text: "Balance" }))),
    el("tbody", {}, ...rows)));
  return { node, acct, txs: txs.data };
}

// The account's whole history as CSV (GET /v1/accounts/{n}/statement, Accept: text/csv),
// fetched with the admin's token and saved as a file.
async function downloadStatement(number) {
  try {
    const resp = await fetch("/v1/accounts/" + encodeURIComponent(number) + "/statement",
      { headers: { Authorization: "Bearer " + state.token, Accept: "text/csv" } });
    if (!resp.ok) throw new Error("HTTP " + resp.status);
    const url = URL.createObjectURL(await resp.blob());
    const link = el("a", { href: url, download: number + "-statement.csv" });
    document.body.append(link);
    link.click();
    link.remove();
    URL.revokeObjectURL(url);
  } catch (err) {
    flash(`Statement of ${number}: ${err.message}`, true);
  }
}

async function statusChange(number, action) {
  const reason = action === "freeze" ? "frozen from the admin console" : "unfrozen from the admin console";
  try {
    const res = await api("POST", `/v1/admin/accounts/${encodeURIComponent(number)}/${action}`, { reason });
    flash(`Account ${number}: ${res.status}`);
  } catch (err) {
    flash(`Account ${number}: ${err.message}`, true);
  }
  await refresh();
}

// ------------------------------------------------------------------ decisions

async function decide(verdict) {
  const r = state.current;
  if (!r) return;
  for (const b of [$("d-approve"), $("d-reject")]) b.disabled = true;
  try {
    const note = $("d-note").value.trim();
    const updated = await api("POST", `/v1/admin/reviews/${r.id}/${verdict}`, note ? { note } : {});
    state.current = updated;
    renderReview(updated);
    flash(verdict === "reject" ? "Rejected: the transfer will be reversed and the receiver frozen."
      : "Approved: the sender is released.");
    loadReviews(true);
    startPolling();
  } catch (err) {
    flash(err.message, true);
  } finally {
    for (const b of [$("d-approve"), $("d-reject")]) b.disabled = false;
  }
}

async function refresh() {
  if (!state.current) return;
  try {
    const r = await api("GET", "/v1/admin/reviews/" + state.current.id);
    state.current = r;
    renderReview(r);
    await renderParties(r);
  } catch (err) {
    flash(err.message, true);
  }
}

// The ledger applies a decision's effects a moment later: watch them for a minute.
function startPolling() {
  stopPolling();
  const until = Date.now() + 60000;
  state.poll = setInterval(() => {
    if (Date.now() > until) stopPolling();
    refresh();
  }, 2000);
  refresh();
}

function stopPolling() {
  if (state.poll) clearInterval(state.poll);
  state.poll = null;
}

// ------------------------------------------------------------------ lookups

async function lookupPayment(ev) {
  ev.preventDefault();
  const out = $("payment-result");
  out.hidden = false;
  try {
    const p = await api("GET", "/v1/payments/" + encodeURIComponent($("p-id").value.trim()));
    const boxes = await Promise.all([
      p.from_account ? accountBox(p.from_account, "From") : null,
      p.to_account ? accountBox(p.to_account, "To") : null,
    ]);
    // GET /v1/payments may still say "completed" for a reversed transfer; the sender's
    // account has the TRANSFER_REVERSED entry of this payment.
    const reversed = p.status === "reversed" || (boxes[0] && boxes[0].txs.some(
      (t) => t.type === "transfer_reversed" && t.payment_id === p.id));
    const status = reversed ? "reversed" : p.status;
    out.replaceChildren(
      el("h2", {}, "Payment ", el("code", { text: p.id })),
      el("dl", { class: "facts" },
        el("dt", { text: "Status" }), el("dd", {}, badge(status)),
        el("dt", { text: "Kind" }), el("dd", { text: p.kind }),
        el("dt", { text: "Amount" }), el("dd", { text: formatAmount(p.amount, p.currency) }),
        ...(p.amount_authorized ? [
          el("dt", { text: "Authorized" }), el("dd", { text: formatAmount(p.amount_authorized, p.currency) }),
          el("dt", { text: "Hold lapses" }), el("dd", { text: p.expires_at ? when(p.expires_at) : "—" })] : []),
        el("dt", { text: "Reason" }), el("dd", { text: p.reason || "—" }),
        el("dt", { text: "Description" }), el("dd", { text: p.description || "—" }),
        el("dt", { text: "Created" }), el("dd", { text: when(p.created_at) })),
      el("div", { class: "accounts" }, ...boxes.filter(Boolean).map((b) => el("div", { class: "account-box" }, b.node))));
  } catch (err) {
    out.replaceChildren(el("p", { class: "error", text: err.status === 404 ? "No such payment." : err.message }));
  }
}

async function lookupAccount(ev) {
  ev.preventDefault();
  const out = $("account-result");
  out.hidden = false;
  try {
    const box = await accountBox($("a-number").value.trim(), "Account");
    out.replaceChildren(el("div", { class: "account-box" }, box.node));
  } catch (err) {
    out.replaceChildren(el("p", { class: "error", text: err.status === 404 ? "No such account." : err.message }));
  }
}

// ------------------------------------------------------------------ wiring

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", () => logout());
  $("filters").addEventListener("submit", (ev) => { ev.preventDefault(); loadReviews(true); });
  $("more").addEventListener("click", () => loadReviews(false));
  $("d-approve").addEventListener("click", () => decide("approve"));
  $("d-reject").addEventListener("click", () => decide("reject"));
  $("d-refresh").addEventListener("click", refresh);
  $("d-payment").addEventListener("click", (ev) => {
    ev.preventDefault();
    $("p-id").value = state.current ? state.current.payment_id : "";
    showTab("payment");
    $("payment-form").requestSubmit();
  });
  $("payment-form").addEventListener("submit", lookupPayment);
  $("account-form").addEventListener("submit", lookupAccount);
  for (const b of document.querySelectorAll("nav .tab")) b.addEventListener("click", () => showTab(b.dataset.tab));
  if (state.token) enter();
});

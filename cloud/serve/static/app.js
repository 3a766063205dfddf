// The live results page: figures from /api/*, kept current by the /events stream.
// No build step, no dependencies. Every figure shown is the server's, never computed here
// except shares (votes / the contest's votes) for the bars.
"use strict";

const fmt = new Intl.NumberFormat(undefined);
const pct = new Intl.NumberFormat(undefined, { style: "percent", minimumFractionDigits: 1, maximumFractionDigits: 1 });
const $ = (id) => document.getElementById(id);
let election = null;       // /api/election
let parents = {};          // unit id -> parent id
let names = {};            // unit id -> name
let lastVersion = 0;
let pending = null;        // a refresh scheduled

function unitFromHash() {
  const m = location.hash.match(/^#\/unit\/(.+)$/);
  return m ? decodeURIComponent(m[1]) : (election ? election.units.id : null);
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children) node.append(c);
  return node;
}

async function getJSON(path) {
  const reply = await fetch(path, { cache: "no-cache" });
  if (!reply.ok) throw new Error(`${path}: ${reply.status}`);
  return reply.json();
}

function indexUnits(unit, parent) {
  parents[unit.id] = parent; names[unit.id] = unit.name;
  for (const child of unit.children || []) indexUnits(child, unit.id);
}

function renderCrumbs(unitId) {
  const path = [];
  for (let u = unitId; u; u = parents[u]) path.unshift(u);
  const nav = $("crumbs"); nav.replaceChildren();
  path.forEach((u, i) => {
    if (i) nav.append(el("span", { class: "sep" }, "›"));
    nav.append(i === path.length - 1 ? el("span", {}, names[u] || u) : el("a", { href: `#/unit/${encodeURIComponent(u)}` }, names[u] || u));
  });
}

function renderFigures(r) {
  $("unit-name").textContent = r.unit.name;
  $("precincts").textContent = `${fmt.format(r.precincts_reporting)} of ${fmt.format(r.precincts_total)}`;
  $("ballots").textContent = fmt.format(r.ballots);
  $("turnout").textContent = r.turnout == null ? "-" : pct.format(r.turnout);
  $("devices").textContent = `${fmt.format(r.devices_final)} of ${fmt.format(r.devices_total)}`;
  const unfinished = r.devices_total - r.devices_final;
  $("devices-health").textContent = `devices: ${fmt.format(r.devices_reporting)} reporting, ` +
    `${fmt.format(r.devices_confirmed)} confirmed (every batch to the final one counted), ${fmt.format(r.devices_silent)} silent; ` +
    (unfinished ? `${fmt.format(unfinished)} without their final batch yet` : "every device has sent its final batch");
  $("rejections").textContent = r.rejections ? `${fmt.format(r.rejections)} message(s) refused: ` +
    Object.entries(r.rejections_by_reason).map(([k, n]) => `${k} ${fmt.format(n)}`).join(", ") : "no message refused";
  const box = $("contests"); box.replaceChildren();
  for (const contest of election.contests) {
    const votes = r.contests[contest.id] || {};
    const total = Object.values(votes).reduce((a, b) => a + b, 0);
    const top = Math.max(0, ...Object.values(votes));
    const card = el("article", { class: "contest", "data-contest": contest.id }, el("h3", {}, contest.name));
    const choices = [...contest.choices].sort((a, b) => (votes[b.id] || 0) - (votes[a.id] || 0));
    for (const choice of choices) {
      const n = votes[choice.id] || 0;
      const share = total ? n / total : 0;
      const row = el("div", { class: "choice" + (n && n === top ? " leader" : ""), "data-choice": choice.id, "data-votes": String(n) },
        el("span", { class: "name" }, choice.name), el("span", { class: "votes" }, fmt.format(n)),
        el("span", { class: "share" }, total ? pct.format(share) : "-"),
        el("div", { class: "bar" }, el("span", { style: `width:${(share * 100).toFixed(2)}%` })));
      card.append(row);
    }
    card.append(el("p", { class: "meta" }, `${fmt.format(total)} votes`));
    box.append(card);
  }
  const body = $("children").tBodies[0]; body.replaceChildren();
  $("children-panel").hidden = !r.children.length;
  for (const c of r.children) {
    const row = el("tr", { class: "unit-row", "data-unit": c.id },
      el("td", {}, el("a", { href: `#/unit/${encodeURIComponent(c.id)}` }, c.name)),
      el("td", {}, `${fmt.format(c.precincts_reporting)} / ${fmt.format(c.precincts_total)}`),
      el("td", {}, fmt.format(c.ballots)), el("td", {}, c.turnout == null ? "-" : pct.format(c.turnout)));
    row.addEventListener("click", () => { location.hash = `#/unit/${encodeURIComponent(c.id)}`; });
    body.append(row);
  }
}

function renderTrend(trend) {
  const svg = $("trend"); svg.replaceChildren();
  const w = trend.windows; if (!w.length) return;
  const top = Math.max(1, ...w.map((x) => x.ballots)); const width = 600 / w.length;
  w.forEach((x, i) => {
    const h = (x.ballots / top) * 116;
    const rect = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    rect.setAttribute("x", (i * width).toFixed(2)); rect.setAttribute("width", Math.max(1, width - 1).toFixed(2));
    rect.setAttribute("y", (120 - h).toFixed(2)); rect.setAttribute("height", h.toFixed(2));
    const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
    title.textContent = `${x.start}: ${fmt.format(x.ballots)} ballots`; rect.append(title); svg.append(rect);
  });
}

function renderGateways(rows) {
  const body = $("gateways").tBodies[0]; body.replaceChildren();
  for (const g of rows) {
    const buffered = (g.buffer.pending || 0) + (g.buffer.inflight || 0);
    body.append(el("tr", {}, el("td", {}, g.gateway),
      el("td", { class: g.state === "online" ? "" : "bad" }, g.state),
      el("td", { class: g.uplink === "down" ? "bad" : "" }, g.uplink || "-"),
      el("td", {}, fmt.format(buffered)), el("td", {}, g.quarantine ? fmt.format(g.quarantine.dropped) : "-")));
  }
  if (!rows.length) body.append(el("tr", {}, el("td", { colspan: "5" }, "no gateway has reported yet")));
}

function renderAlerts(rows) {
  const list = $("alerts"); list.replaceChildren();
  for (const a of rows.slice(0, 20)) list.append(el("li", {}, `${a.rule || ""} ${a.device || ""}: ${a.message || JSON.stringify(a.row || {})}`));
  if (!rows.length) list.append(el("li", {}, "none"));
}

async function getAudit() {
  const reply = await fetch("/api/audit", { cache: "no-cache" });
  if (reply.status === 404) return null;  // the service runs without the registry (--keys)
  if (!reply.ok) throw new Error(`/api/audit: ${reply.status}`);
  return reply.json();
}

let auditTimer = null;

async function refreshAudit() {
  auditTimer = null;
  renderAudit(await getAudit());
}

function renderAudit(audit) {
  const node = $("audit");
  if (audit === null) { node.textContent = "audit: not run by this server (start it with --keys)"; node.className = ""; return; }
  if (audit.version < lastVersion && !auditTimer) auditTimer = setTimeout(() => refreshAudit().catch(console.error), 3000);
  const failing = audit.checks.filter((c) => !c.ok).map((c) => c.name);
  node.textContent = audit.ok ? `audit: all ${audit.checks.length} checks hold at version ${fmt.format(audit.version)}`
    : `audit: ${failing.length} of ${audit.checks.length} checks fail (${failing.join(", ")}) at version ${fmt.format(audit.version)}`;
  node.className = audit.ok ? "" : "bad";
}

async function refresh() {
  pending = null;
  const unit = unitFromHash();
  const [r, trend, gws, alerts, audit] = await Promise.all([
    getJSON(`/api/units/${encodeURIComponent(unit)}`), getJSON(`/api/trend/${encodeURIComponent(unit)}`),
    getJSON("/api/gateways"), getJSON("/api/alerts"), getAudit(),
  ]);
  renderCrumbs(unit); renderFigures(r); renderTrend(trend); renderGateways(gws); renderAlerts(alerts); renderAudit(audit);
  $("updated").textContent = new Date().toLocaleTimeString();
  document.body.dataset.unit = unit;
  document.body.dataset.shownBatches = String(r.batches);
}

function schedule() { if (!pending) pending = setTimeout(() => refresh().catch(console.error), 200); }

function listen() {
  const stream = new EventSource("/events");
  stream.addEventListener("open", () => {
    $("banner").hidden = true; $("live").textContent = "live"; $("live").className = "live on"; schedule();
  });
  stream.addEventListener("error", () => {
    $("banner").hidden = false; $("live").textContent = "reconnecting"; $("live").className = "live off";
  });
  for (const name of ["version", "change"]) {
    stream.addEventListener(name, (event) => {
      const data = JSON.parse(event.data);
      if (data.version < lastVersion) return;
      lastVersion = data.version; $("version").textContent = fmt.format(data.version);
      document.body.dataset.version = String(data.version);
      if (name === "version" || unitFromHash() in (data.units || {})) schedule();
    });
  }
}

async function start() {
  election = await getJSON("/api/election");
  $("election-name").textContent = election.name; document.title = `${election.name} · live results`;
  indexUnits(election.units, null);
  window.addEventListener("hashchange", () => refresh().catch(console.error));
  await refresh(); listen();
}

start().catch((err) => { $("banner").hidden = false; $("banner").textContent = `Cannot load results: ${err.message}`; });

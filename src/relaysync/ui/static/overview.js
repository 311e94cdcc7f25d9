// The overview: servers, mappings with every target's watermark and lag, open alerts, held
// mass deletes; and the incident actions (confirm deletes, send a release, acknowledge).

import { api } from "./api.js";
import { actionButton, ago, byId, cell, confirmDialog, el, setText, table, when } from "./dom.js";

const SENDABLE_MODES = new Set(["manual", "reserved"]);

// Everything the overview shows, fetched in parallel.
export async function fetchOverview() {
  const [servers, mappings, alerts] = await Promise.all([
    api("/api/servers"),
    api("/api/mappings"),
    api("/api/alerts?open=true&limit=100"),
  ]);
  const details = await Promise.all(mappings.map((m) => fetchMapping(m)));
  return { servers, mappings: details, alerts };
}

async function fetchMapping(mapping) {
  const [status, mode] = await Promise.all([
    api(`/api/mappings/${mapping.id}/status`),
    api(`/api/mappings/${mapping.id}/mode`),
  ]);
  return { ...mapping, status, mode };
}

export function renderOverview(data, feed, ctx) {
  const names = new Map(data.mappings.map((m) => [m.id, m.name]));
  byId("held").replaceChildren(heldView(feed.held, names, ctx));
  byId("alerts").replaceChildren(alertsView(data.alerts, ctx));
  byId("alarms").replaceChildren(...alarmsView(feed.alarms));
  byId("servers").replaceChildren(serversView(data.servers));
  byId("mappings").replaceChildren(...data.mappings.map((m) => mappingView(m, ctx)));
  if (data.mappings.length === 0) byId("mappings").append(el("p", { className: "muted" }, "No mappings."));
  setText("updated", new Date().toLocaleTimeString());
}

function serversView(servers) {
  const rows = servers.map((s) =>
    el("tr", { dataset: { server: s.name } },
      cell(s.name, "name"),
      cell(`${s.region || "-"} / ${s.group || "-"}`),
      cell(s.state, `state state-${s.state === "up" ? "up" : "down"}`),
      cell(s.health, s.health === "ok" ? "" : "warn"),
      cell(ago(s.last_seen), "last-seen"),
      cell(s.address)));
  return table(["Server", "Region / group", "State", "Health", "Last seen", "Address"], rows);
}

// Why its agents do not run it, if they do not: disabled, or its source server revoked (sent
// disabled although enabled; the status' source_error says what to do).
function idleNote(m) {
  if (m.state === "source_revoked") {
    return el("span", { className: "warn idle" }, " idle: source revoked");
  }
  return m.enabled ? null : el("span", { className: "warn idle" }, " disabled");
}

function mappingView(m, ctx) {
  const mode = m.mode.mode;
  const heading = el("div", { className: "mapping-head" },
    el("h3", {}, m.name),
    el("span", { className: "mode" }, mode),
    el("span", { className: "muted" }, ` ${m.source_name}:${m.source_path}`),
    idleNote(m),
    SENDABLE_MODES.has(mode) ? sendButton(m, ctx) : null);
  const release = SENDABLE_MODES.has(mode) ? releaseLine(m.mode) : null;
  // Its source cannot run (its folder missing, refused, unreadable...): why, since when.
  const failing = m.status.source_error
    ? el("p", { className: "warn source-error" },
      m.status.source_error_since == null  // no failure reported: a revoked source
        ? `Source failing: ${m.status.source_error}`
        : `Source failing since ${when(m.status.source_error_since)}: ${m.status.source_error}`)
    : null;
  const rows = m.status.targets.map((t) => targetRow(t, m.mode, SENDABLE_MODES.has(mode)));
  const headings = ["Target", "Path", "Watermark", "Source seq", "Lag"];
  // Held back until the next release: by choice, so apart from the lag and not coloured.
  if (SENDABLE_MODES.has(mode)) headings.push("Pending");
  headings.push("Open exceptions", "Updated");
  if (SENDABLE_MODES.has(mode)) headings.push("Release progress");
  return el("section", { className: "mapping", dataset: { mapping: m.name } },
    heading, failing, release, table(headings, rows));
}

function targetRow(t, mode, withRelease) {
  const row = el("tr", { dataset: { target: t.target_name } },
    cell(t.target_name, "name"),
    cell(t.path),
    cell(String(t.watermark), "watermark"),
    cell(String(t.highest_seq), "highest"),
    cell(String(t.lag), t.lag > 0 ? "lag behind" : "lag"));
  if (withRelease) row.append(cell(String(t.pending ?? 0), "pending"));
  row.append(
    cell(String(t.open_exceptions), t.open_exceptions > 0 ? "exceptions warn" : "exceptions"),
    cell(ago(t.updated_at)));
  if (withRelease) row.append(progressCell(t.watermark, mode.released_upto));
  return row;
}

function progressCell(watermark, upto) {
  if (!upto) return cell("no release yet", "progress muted");
  const done = Math.min(watermark, upto);
  const bar = el("progress", { max: upto, value: done });
  const text = watermark >= upto ? "done" : `${done} / ${upto}`;
  return cell([bar, " ", text], watermark >= upto ? "progress done" : "progress");
}

function releaseLine(mode) {
  const upto = mode.released_upto ? `covers the source's changes up to seq ${mode.released_upto}` : "not reported by the source yet";
  const last = mode.last_run_at ? `, sent ${when(mode.last_run_at)}` : "";
  return el("p", { className: "release" }, `Releases: ${mode.release}; the last one ${upto}${last}.`);
}

function sendButton(m, ctx) {
  return actionButton("Send release", {
    admin: ctx.admin,
    className: "send",
    run: async () => {
      const out = await api(`/api/mappings/${m.id}/send`, { method: "POST" });
      ctx.notice(`Release #${out.release} of ${m.name} requested; progress shows per target.`);
      ctx.refresh();
    },
  });
}

function heldView(held, names, ctx) {
  if (held.size === 0) return el("p", { className: "muted" }, "No mass delete held.");
  const rows = [...held.values()].map((event) => heldRow(event, names, ctx));
  return table(["Mapping", "Source", "Held deletes", "Since", ""], rows, "held");
}

function heldRow(event, names, ctx) {
  const d = event.data;
  const name = names.get(d.mapping_id) || `#${d.mapping_id}`;
  const what = `${d.deletes} of ${d.entries} entries${d.root_missing ? " (the source folder is missing)" : ""}`;
  const button = actionButton(`Confirm ${d.deletes} deletes`, {
    admin: ctx.admin,
    className: "danger confirm-deletes",
    run: () => confirmDeletes(d, name, ctx),
  });
  return el("tr", { dataset: { held: name } },
    cell(name, "name"), cell(d.server), cell(what, "count"), cell(ago(event.time)), cell(button));
}

async function confirmDeletes(d, name, ctx) {
  const text = `${d.deletes} files and folders deleted on ${d.server} will be deleted on every target of ${name}. This cannot be undone.`;
  if (!(await confirmDialog(`Delete ${d.deletes} entries?`, text, `Delete ${d.deletes} entries`))) return;
  await api(`/api/mappings/${d.mapping_id}/confirm-deletes`, { method: "POST" });
  ctx.feed.held.delete(d.mapping_id);
  ctx.notice(`Deletes of ${name} confirmed: they go to the targets.`);
  ctx.refresh();
}

function alertsView(alerts, ctx) {
  if (alerts.length === 0) return el("p", { className: "muted" }, "No open alert.");
  const rows = alerts.map((a) =>
    el("tr", { dataset: { alert: String(a.id) } },
      cell(a.server), cell(a.kind), cell(a.subject), cell(a.message), cell(a.state, "state"),
      cell(ago(a.fired_at)),
      cell(a.state === "firing" ? ackButton(a, ctx) : `by ${a.acknowledged_by}`)));
  return table(["Server", "Kind", "Subject", "Message", "State", "Fired", ""], rows, "alerts");
}

function ackButton(alert, ctx) {
  return actionButton("Acknowledge", {
    admin: ctx.admin,
    className: "ack",
    run: async () => {
      await api(`/api/alerts/${alert.id}/acknowledge`, { method: "POST", body: { by: "console" } });
      ctx.refresh();
    },
  });
}

function alarmsView(alarms) {
  if (alarms.length === 0) return [];
  const rows = alarms.map((e) =>
    el("tr", {}, cell(when(e.time)), cell(Object.entries(e.data).map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join(", "))));
  return [el("h3", {}, "Recent console alarms"), table(["At", "Alarm"], rows, "alarms")];
}

// The job log and the purge log: newest first, filtered by mapping or site (by the API) and by
// a path or URL substring (on the rows fetched), paged with the API's own `before` cursor.

import { api, query } from "./api.js";
import { byId, cell, el, setText, showError, table, when } from "./dom.js";

class LogView {
  // prefix: the ids' prefix ("jobs", "purges"); spec: {path, filterParam, cursorOf, matches,
  // headings, row}
  constructor(prefix, spec) {
    this.prefix = prefix;
    this.spec = spec;
    this.before = null; // null: the newest page
    this.lastRows = [];
    this.loads = 0; // the latest load's number: an older answer arriving late is dropped
    this.ids = (name) => byId(`${prefix}-${name}`);
    this.ids("refresh").addEventListener("click", () => this.load());
    this.ids("newest").addEventListener("click", () => this.first());
    this.ids("older").addEventListener("click", () => this.older());
    this.ids("limit").addEventListener("change", () => this.first());
    this.ids("path").addEventListener("input", () => this.render());
    this.ids("filter").addEventListener("change", () => this.first());
  }

  first() {
    this.before = null;
    return this.load();
  }

  older() {
    if (this.lastRows.length === 0) return;
    this.before = this.spec.cursorOf(this.lastRows[this.lastRows.length - 1]);
    return this.load();
  }

  async load() {
    const number = ++this.loads;
    const limit = Number(this.ids("limit").value);
    const params = { limit, before: this.before, [this.spec.filterParam]: this.ids("filter").value };
    try {
      const rows = await api(`${this.spec.path}${query(params)}`);
      if (number !== this.loads) return;
      this.lastRows = rows;
      showError("banner", "");
      this.render();
    } catch (err) {
      if (number === this.loads) showError("banner", err.message);
    }
  }

  render() {
    const needle = this.ids("path").value;
    const rows = this.lastRows.filter((r) => !needle || this.spec.matches(r, needle));
    const page = this.before === null ? "newest page" : `page before ${String(this.before).split(":")[0]}`;
    const filtered = needle ? `, ${rows.length} match` : "";
    setText(`${this.prefix}-info`, `${this.lastRows.length} rows (${page})${filtered}.`);
    this.ids("older").disabled = this.lastRows.length < Number(this.ids("limit").value);
    byId(this.prefix).replaceChildren(table(this.spec.headings, rows.map((r) => this.spec.row(r)), `log ${this.prefix}`));
  }

  // Live: only the newest page follows the log (an older page stays still while read).
  follow() {
    if (this.before === null) return this.load();
  }
}

// Rebuilt only when the list changed: rebuilding closes a dropdown the operator has open.
function options(select, items) {
  const wanted = JSON.stringify(items);
  if (select.dataset.items === wanted) return;
  select.dataset.items = wanted;
  const current = select.value;
  const all = el("option", { value: "" }, "all");
  select.replaceChildren(all, ...items.map(([value, label]) => el("option", { value }, label)));
  if (items.some(([value]) => value === current)) select.value = current;
}

export function jobLog(names) {
  return new LogView("jobs", {
    path: "/api/jobs",
    filterParam: "mapping",
    // the whole row key: a bare seq would skip that seq's rows of other mappings (or journals)
    cursorOf: (r) => `${r.seq}:${r.mapping_id}:${r.source_node}:${r.journal_id}`,
    matches: (r, needle) => r.path.includes(needle),
    headings: ["Mapping", "Seq", "Op", "Path", "Size", "Reported", "Committed"],
    row: (r) =>
      el("tr", { dataset: { seq: String(r.seq) } },
        cell(names.mappings.get(r.mapping_id) || `#${r.mapping_id}`), cell(String(r.seq)), cell(r.op),
        cell(r.path, "path"), cell(String(r.size)), cell(when(r.reported_at)),
        r.replaced
          ? cell("old journal") // the source's journal was recreated since: history, not pending
          : cell(`${r.committed_targets} / ${r.total_targets}`, r.committed_targets < r.total_targets ? "warn" : "")),
  });
}

export function purgeLog(names) {
  return new LogView("purges", {
    path: "/api/purges",
    filterParam: "site",
    cursorOf: (r) => r.id,
    matches: (r, needle) => r.url.includes(needle),
    headings: ["At", "Site", "Cache", "URL", "Action", "Status", "Confirmed", "Attempts", "ms", "Detail"],
    row: (r) =>
      el("tr", { dataset: { purge: String(r.id) } },
        cell(when(r.at)), cell(names.sites.get(r.site_id) || `#${r.site_id}`), cell(r.cache),
        cell(r.url, "path"), cell(r.action), cell(r.status),
        cell(r.confirmed === null ? "-" : r.confirmed ? "yes" : "no"), cell(String(r.attempts)),
        cell(r.duration_ms.toFixed(1)), cell(r.detail)),
  });
}

// The mapping and site pickers, from the API; names maps ids to names for the rows.
export async function refreshFilters(names) {
  const [mappings, sites] = await Promise.all([api("/api/mappings"), api("/api/sites")]);
  names.mappings = new Map(mappings.map((m) => [m.id, m.name]));
  names.sites = new Map(sites.map((s) => [s.id, s.name]));
  options(byId("jobs-filter"), mappings.map((m) => [m.name, m.name]));
  options(byId("purges-filter"), sites.map((s) => [s.name, s.name]));
}

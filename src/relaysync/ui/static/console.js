// The console's entry point: login with a token, the views, and the live refresh.

import { api, setUnauthorizedHandler, token } from "./api.js";
import { byId, setText, showError } from "./dom.js";
import { EventFeed } from "./events.js";
import { jobLog, purgeLog, refreshFilters } from "./logs.js";
import { fetchOverview, renderOverview } from "./overview.js";

// Lag figures have no event (watermarks advance in the job log's batches): the overview is
// also re-fetched this often, besides at once after an event.
const REFRESH_MS = 2000;
const EVENT_DEBOUNCE_MS = 150;

let session = null; // the logged-in state, null on the login form

function showLogin(message) {
  if (session) session.stop();
  session = null;
  token.clear();
  byId("app").hidden = true;
  byId("nav").hidden = true;
  byId("login").hidden = false;
  showError("login-error", message || "");
  byId("token").value = "";
  byId("token").focus();
}

class Session {
  constructor(who) {
    this.admin = who.scope === "admin";
    this.names = { mappings: new Map(), sites: new Map() };
    this.feed = new EventFeed(() => this.soon(), (message) => showError("banner", message));
    this.logs = { jobs: jobLog(this.names), purges: purgeLog(this.names) };
    this.view = "overview";
    this.timer = null;
    this.pending = null;
    this.busy = false;
    this.again = false;
    this.stopped = false;
    this.ctx = {
      admin: this.admin,
      feed: this.feed,
      refresh: () => this.soon(),
      notice: (message) => setText("notice", message),
    };
    setText("whoami", `${who.id} (${who.scope})`);
  }

  async start() {
    await this.feed.start();
    if (this.stopped) return; // logged out meanwhile
    await this.refresh();
    if (!this.stopped) this.timer = setInterval(() => this.refresh(), REFRESH_MS);
  }

  stop() {
    this.stopped = true;
    this.feed.stop();
    clearInterval(this.timer);
    clearTimeout(this.pending);
  }

  soon() {
    clearTimeout(this.pending);
    this.pending = setTimeout(() => this.refresh(), EVENT_DEBOUNCE_MS);
  }

  // One refresh at a time; one asked for meanwhile runs right after.
  async refresh() {
    if (this.busy) {
      this.again = true;
      return;
    }
    this.busy = true;
    try {
      await this.refreshView();
    } finally {
      this.busy = false;
    }
    if (this.again && !this.stopped) {
      this.again = false;
      await this.refresh();
    }
  }

  async refreshView() {
    try {
      if (this.view === "overview") {
        const data = await fetchOverview();
        if (!this.stopped) renderOverview(data, this.feed, this.ctx);
      } else {
        await refreshFilters(this.names);
        await this.logs[this.view].follow();
      }
      if (!this.stopped) showError("banner", "");
    } catch (err) {
      if (!this.stopped) showError("banner", err.message);
    }
  }

  async show(view) {
    this.view = view;
    for (const tab of document.querySelectorAll("#nav .tab")) {
      tab.classList.toggle("active", tab.dataset.view === view);
    }
    for (const name of ["overview", "jobs", "purges"]) byId(`view-${name}`).hidden = name !== view;
    if (view !== "overview") await refreshFilters(this.names).catch((err) => showError("banner", err.message));
    await this.refresh();
  }
}

async function login(value) {
  token.set(value);
  let who;
  try {
    who = await api("/api/whoami");
  } catch (err) {
    showLogin(err.status === 401 ? `Token refused: ${err.message}` : err.message);
    return;
  }
  showError("login-error", "");
  byId("login").hidden = true;
  byId("app").hidden = false;
  byId("nav").hidden = false;
  session = new Session(who);
  await session.show("overview");
  session.start().catch((err) => showError("banner", err.message));
}

function wire() {
  setUnauthorizedHandler((message) => showLogin(`Logged out, the token was refused: ${message}`));
  byId("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    login(byId("token").value.trim());
  });
  byId("logout").addEventListener("click", () => showLogin(""));
  for (const tab of document.querySelectorAll("#nav .tab")) {
    tab.addEventListener("click", () => session && session.show(tab.dataset.view));
  }
}

wire();
if (token.get()) login(token.get());
else showLogin("");

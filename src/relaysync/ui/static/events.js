// The event bus, read with GET /api/events?since=N (long-poll): what it tells the console that
// no other resource shows (held mass deletes, console alarms), and when to re-fetch the rest.

import { api, ApiError } from "./api.js";

const POLL_S = 25; // the server waits this long for an event; well under its 60 s cap
const POLL_TIMEOUT_MS = (POLL_S + 10) * 1000;
const RETRY_MS = 3000; // after a failed poll
const PAGE = 1000; // the API's most events per read
const ALARMS_KEPT = 20;

export class EventFeed {
  constructor(onChange, onError) {
    this.onChange = onChange; // () => void: something changed, re-fetch
    this.onError = onError; // (message) => void
    this.cursor = 0;
    this.held = new Map(); // mapping id -> the latest mass_delete_held event not ended since
    this.alarms = []; // the latest console alarms, newest first
    this.running = false;
  }

  // Reads the whole ring (held deletes raised before the page opened), then long-polls.
  async start() {
    this.running = true;
    let batch;
    do {
      batch = await api(`/api/events?since=${this.cursor}&limit=${PAGE}`);
      this.apply(batch);
    } while (batch.length === PAGE && this.running);
    this.poll();
  }

  stop() {
    this.running = false;
  }

  async poll() {
    while (this.running) {
      try {
        const path = `/api/events?since=${this.cursor}&timeout_s=${POLL_S}`;
        const batch = await api(path, { timeoutMs: POLL_TIMEOUT_MS });
        if (!this.running) return;
        if (this.apply(batch)) this.onChange();
      } catch (err) {
        if (!this.running || (err instanceof ApiError && err.status === 401)) return;
        this.onError(err.message);
        await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
      }
    }
  }

  // Returns whether there were events.
  apply(batch) {
    if (batch.length === 0) return false;
    if (batch[0].id <= this.cursor) this.reset(); // the master restarted: ids start again
    for (const event of batch) this.take(event);
    this.cursor = batch[batch.length - 1].id;
    return true;
  }

  reset() {
    this.held.clear();
    this.alarms = [];
  }

  take(event) {
    const data = event.data || {};
    if (event.type === "mass_delete_held") {
      this.held.set(data.mapping_id, event);
    } else if (event.type === "mapping_changed" && data.delete_confirm !== undefined) {
      this.held.delete(data.mapping_id);
    } else if (event.type === "mapping_deleted" || event.type === "mass_delete_ended") {
      // mass_delete_ended: the hold is over without a confirmation here (the paths came back,
      // the mapping moved or changed); replayed from the ring, it follows the held event
      this.held.delete(data.mapping_id);
    } else if (event.type === "alarm" && data.reason !== "mass delete held") {
      this.alarms.unshift(event);
      this.alarms.length = Math.min(this.alarms.length, ALARMS_KEPT);
    }
  }
}

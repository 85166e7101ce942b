// Getting to the model: wait for /ready (showing why it is not), then read /v1/models,
// asking for an API key when the API answers 401.

import { ApiError } from "./api.js";
import { askForKey } from "./dialogs.js";
import { $, notice, sleep } from "./util.js";

export class Connection {
  /** onModel(model) is called with {id, demo, maxModelLen} once the gateway is ready. */
  constructor(api, keys, onModel) {
    this.api = api;
    this.keys = keys;
    this.onModel = onModel;
    this.pending = null;
  }

  /** Wait for the model; runs once at a time. */
  connect() {
    if (!this.pending) this.pending = this.waitForModel().finally(() => (this.pending = null));
    return this.pending;
  }

  get connecting() {
    return this.pending !== null;
  }

  askKey() {
    const reason = this.keys.get()
      ? "The gateway did not accept this API key. Enter another one."
      : "This gateway asks for an API key. Enter yours to chat.";
    return askForKey(reason, this.keys);
  }

  async waitForModel() {
    for (;;) {
      let wait = 2;
      try {
        const ready = await this.api.ready();
        if (ready.ready) {
          this.onModel(await this.api.model());
          setStatus("ready", "ok");
          return;
        }
        setStatus(describeUnready(ready.reason), "wait");
        wait = ready.retryAfter || 1;
      } catch (error) {
        if (error instanceof ApiError && error.kind === "auth") {
          if ((await this.askKey()) != null) continue;
          setStatus("API key needed", "error");
          notice("This gateway needs an API key. Press Send to enter it.", "warn");
          return;
        }
        const unreachable = !(error instanceof ApiError) || error.kind === "network";
        setStatus(unreachable ? "cannot reach the gateway, retrying…" : error.message, "error");
      }
      await sleep(Math.max(1, wait) * 1000);
    }
  }
}

function setStatus(text, kind) {
  const status = $("status");
  status.textContent = text;
  status.dataset.kind = kind;
}

function describeUnready(reason) {
  if (reason.startsWith("failed")) return `the model failed to load (${reason.replace(/^failed:\s*/, "")})`;
  if (reason === "shutting down") return "the gateway is shutting down";
  return "model loading…";
}

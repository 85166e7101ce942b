// The gateway's public API, as the page uses it: /ready, /v1/models, /v1/chat/completions.
// Every failure becomes an ApiError whose `kind` says what the page should do about it.

import { readStream } from "./sse.js";

/**
 * kinds: "auth" (401), "rate_limit" (429), "busy" (503 overloaded), "loading" (503 model not
 * ready), "unavailable" (other 503), "refused" (other 4xx), "server" (5xx), "network" (no answer).
 */
export class ApiError extends Error {
  constructor(kind, message, { status = 0, code = null, retryAfter = null, requestId = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.kind = kind;
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter; // seconds, or null when the server gave none
    this.requestId = requestId;
  }
}

/** Seconds in a Retry-After header (delay or HTTP date), or null. */
export function retryAfterSeconds(value, now = Date.now()) {
  if (value == null || value === "") return null;
  if (/^\d+$/.test(value.trim())) return Number(value.trim());
  const when = Date.parse(value);
  return Number.isNaN(when) ? null : Math.max(0, Math.ceil((when - now) / 1000));
}

function kindOf(status, code) {
  if (status === 401) return "auth";
  if (status === 429) return "rate_limit";
  if (status === 503) return code === "overloaded" ? "busy" : code === "model_not_ready" ? "loading" : "unavailable";
  if (status >= 500) return "server";
  return "refused";
}

async function errorFrom(response) {
  let message = `${response.status} ${response.statusText}`.trim();
  let code = null;
  try {
    const body = await response.json();
    const error = body && (body.error || body);
    if (error && typeof error.message === "string") message = error.message;
    if (error && typeof error.code === "string") code = error.code;
  } catch {
    // not JSON (a proxy's page): the status line is all there is
  }
  return new ApiError(kindOf(response.status, code), message, {
    status: response.status,
    code,
    retryAfter: retryAfterSeconds(response.headers.get("Retry-After")),
    requestId: response.headers.get("x-request-id"),
  });
}

export class Api {
  /** getKey() returns the API key to send, or "" for none. */
  constructor(getKey) {
    this.getKey = getKey;
  }

  headers(json) {
    const headers = {};
    if (json) headers["Content-Type"] = "application/json";
    const key = this.getKey();
    if (key) headers["Authorization"] = `Bearer ${key}`;
    return headers;
  }

  async fetch(path, init = {}) {
    let response;
    try {
      response = await fetch(path, { cache: "no-store", ...init });
    } catch (error) {
      if (error && error.name === "AbortError") throw error;
      throw new ApiError("network", "The gateway cannot be reached.");
    }
    if (!response.ok) throw await errorFrom(response);
    return response;
  }

  /** {ready: true} or {ready: false, reason, retryAfter}; throws ApiError("network"). */
  async ready() {
    let response;
    try {
      response = await fetch("/ready", { cache: "no-store" });
    } catch {
      throw new ApiError("network", "The gateway cannot be reached.");
    }
    if (response.ok) return { ready: true };
    let reason = "";
    try {
      reason = (await response.json()).reason || "";
    } catch {
      // a proxy's error page
    }
    return {
      ready: false,
      reason: reason || `${response.status} ${response.statusText}`.trim(),
      retryAfter: retryAfterSeconds(response.headers.get("Retry-After")),
    };
  }

  /** The served model: {id, demo, maxModelLen}. */
  async model() {
    const response = await this.fetch("/v1/models", { headers: this.headers(false) });
    const body = await response.json();
    const model = body.data && body.data[0];
    if (!model) throw new ApiError("loading", "The gateway serves no model yet.");
    return { id: model.id, demo: model.demo === true, maxModelLen: model.max_model_len || null };
  }

  /**
   * Stream a chat completion. onDelta(text) gets each piece of content, onFinish(reason) the
   * finish reason, onUsage(usage) the usage chunk. Returns true when the stream ended with [DONE].
   */
  async chat(body, { signal, onDelta, onFinish, onUsage }) {
    const response = await this.fetch("/v1/chat/completions", {
      method: "POST",
      headers: this.headers(true),
      body: JSON.stringify(body),
      signal,
    });
    return readStream(response.body, (event) => {
      for (const choice of event.choices || []) {
        const text = choice.delta && choice.delta.content;
        if (text) onDelta(text);
        if (choice.finish_reason) onFinish(choice.finish_reason);
      }
      if (event.usage) onUsage(event.usage);
    });
  }
}

// Server-sent events reader for OpenAI-style streams.
// - Keeps a partial line between network reads: an event may arrive in any number of pieces.
// - Decodes UTF-8 with {stream: true}, so a character split between two reads stays whole.
// - Ignores comment lines (": ping") and fields other than data; stops at "data: [DONE]".

/** A `data: {"error": ...}` event sent after the stream started. */
export class StreamError extends Error {
  constructor(error) {
    super(error && error.message ? error.message : "The server reported an error.");
    this.name = "StreamError";
    this.code = error && error.code;
  }
}

/**
 * Read `body` (a ReadableStream of bytes) and call onData(object) for each JSON event.
 * Returns true when the stream ended with [DONE], false when it just stopped.
 * Throws StreamError for an error event, and whatever the network throws.
 */
export async function readStream(body, onData) {
  const reader = body.getReader();
  const decoder = new TextDecoder("utf-8");
  let buffer = "";
  let data = [];

  // One line of the stream; returns true at [DONE].
  const takeLine = (line) => {
    if (line === "") {
      if (data.length === 0) return false;
      const payload = data.join("\n");
      data = [];
      if (payload === "[DONE]") return true;
      const event = JSON.parse(payload);
      if (event && event.error) throw new StreamError(event.error);
      onData(event);
      return false;
    }
    if (line.startsWith(":")) return false; // a comment: keep-alive ping
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    if (field !== "data") return false;
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    data.push(value);
    return false;
  };

  // Lines complete in the buffer; a trailing "\r" waits, its "\n" may be in the next read.
  const takeLines = (final) => {
    let start = 0;
    for (let i = 0; i < buffer.length; i++) {
      const ch = buffer[i];
      if (ch !== "\n" && ch !== "\r") continue;
      if (ch === "\r" && i + 1 === buffer.length && !final) break;
      const line = buffer.slice(start, i);
      if (ch === "\r" && buffer[i + 1] === "\n") i++;
      start = i + 1;
      if (takeLine(line)) return true;
    }
    buffer = buffer.slice(start);
    return false;
  };

  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      if (takeLines(false)) return true;
    }
    buffer += decoder.decode();
    return takeLines(true);
  } finally {
    // Past [DONE] or on an error nothing more is wanted: let the connection go.
    reader.cancel().catch(() => {});
  }
}

// Sampling settings: their bounds, the request fields they become, and the slash commands
// that change them. Saved in the browser and applied to the next request.

const SETTINGS_KEY = "ncg.settings";

// nanochat's own chat page sampled at temperature 0.8 with top-k 50.
export const DEFAULTS = Object.freeze({
  temperature: 0.8,
  topK: 50,
  topP: 1,
  maxTokens: null, // null: the server's default, shortened to what the context leaves
  seed: null, // null: a fresh random seed per request
  system: "",
});

// name -> [min, max, integer?]; maxTokens' max is the model's context when known.
const BOUNDS = {
  temperature: [0, 2, false],
  topK: [0, 200, true],
  topP: [0.01, 1, false],
  maxTokens: [1, 1000000, true],
  seed: [-(2 ** 53 - 1), 2 ** 53 - 1, true],
};

export const HELP = [
  ["/temperature X", "sampling temperature, 0 to 2 (0 always picks the likeliest token)"],
  ["/topk N", "sample from the N likeliest tokens, 0 to 200 (0 = off)"],
  ["/max_tokens N", "longest reply in tokens; no N = as long as the context allows"],
  ["/system TEXT", "system prompt for the next requests; no TEXT = none"],
  ["/clear", "start a new, empty chat"],
  ["/help", "this list"],
  ["//text", "send text that begins with a slash"],
  ["Enter / Shift+Enter", "send / new line"],
  ["Esc", "stop the reply; close a panel"],
  ["Ctrl+Shift+N or Ctrl+Shift+O", "new chat"],
];

/** Check one setting's value (text or number); returns {value} or {error}. */
export function checkSetting(name, raw, maxModelLen = null) {
  if (name === "system") return { value: String(raw ?? "") };
  const text = String(raw ?? "").trim();
  if (text === "" && (name === "maxTokens" || name === "seed")) return { value: null };
  const value = Number(text);
  let [min, max, integer] = BOUNDS[name];
  if (name === "maxTokens" && maxModelLen) max = maxModelLen;
  if (text === "" || !Number.isFinite(value)) return { error: `${LABELS[name]} must be a number.` };
  if (integer && !Number.isInteger(value)) return { error: `${LABELS[name]} must be a whole number.` };
  if (value < min || value > max) return { error: `${LABELS[name]} must be from ${min} to ${max}.` };
  return { value };
}

export const LABELS = {
  temperature: "Temperature",
  topK: "Top-k",
  topP: "Top-p",
  maxTokens: "Max tokens",
  seed: "Seed",
  system: "System prompt",
};

export function loadSettings(storage) {
  const settings = { ...DEFAULTS };
  try {
    const saved = JSON.parse((storage && storage.getItem(SETTINGS_KEY)) || "{}");
    for (const name of Object.keys(DEFAULTS)) {
      if (!(name in saved)) continue;
      const checked = checkSetting(name, saved[name]);
      if (!checked.error) settings[name] = checked.value;
    }
  } catch {
    // unreadable settings: the defaults
  }
  return settings;
}

/** Save settings; returns false when the browser would not store them. */
export function saveSettings(storage, settings) {
  try {
    if (storage) storage.setItem(SETTINGS_KEY, JSON.stringify(settings));
    return Boolean(storage);
  } catch {
    return false;
  }
}

/** The request fields for these settings (max_tokens held to the model's context). */
export function requestFields(settings, maxModelLen = null) {
  const fields = { temperature: settings.temperature, top_k: settings.topK, top_p: settings.topP };
  if (settings.maxTokens != null) {
    fields.max_tokens = maxModelLen ? Math.min(settings.maxTokens, maxModelLen) : settings.maxTokens;
  }
  if (settings.seed != null) fields.seed = settings.seed;
  return fields;
}

const COMMANDS = { temperature: "temperature", topk: "topK", max_tokens: "maxTokens", system: "system" };

/**
 * Parse a slash command. Returns null for an ordinary message, else one of
 * {kind: "set", name, value, text} | {kind: "show", name} | {kind: "clear"} | {kind: "help", unknown}
 * | {kind: "error", message}. "//text" is an ordinary message "/text".
 */
export function parseCommand(input, maxModelLen = null) {
  const text = input.trim();
  if (!text.startsWith("/") || text.startsWith("//")) return null;
  const [, word, rest = ""] = /^\/(\S*)\s*([\s\S]*)$/.exec(text);
  const command = word.toLowerCase();
  if (command === "help") return { kind: "help", unknown: null };
  if (command === "clear") return { kind: "clear" };
  const name = COMMANDS[command];
  if (!name) return { kind: "help", unknown: `/${word}` };
  if (name === "system") return { kind: "set", name, value: rest.trim() };
  if (!rest.trim()) return name === "maxTokens" ? { kind: "set", name, value: null } : { kind: "show", name };
  const checked = checkSetting(name, rest, maxModelLen);
  return checked.error ? { kind: "error", message: checked.error } : { kind: "set", name, value: checked.value };
}

/** "//text" sends "/text". */
export function unescapeMessage(input) {
  return input.trimStart().startsWith("//") ? input.replace("//", "/") : input;
}

export function describeSetting(name, value) {
  if (name === "maxTokens" && value == null) return "Max tokens: as many as the context allows";
  if (name === "seed" && value == null) return "Seed: random";
  if (name === "system") return value ? `System prompt: ${value}` : "System prompt: none";
  return `${LABELS[name]}: ${value}`;
}

// nanochat's chat page: talks to this gateway's public API only (/ready, /v1/models,
// /v1/chat/completions streamed), keeps conversations and settings in the browser.

import { Api, ApiError } from "./api.js";
import { KeyStore, askForKey, confirmAction } from "./dialogs.js";
import { SettingsPanel } from "./panel.js";
import { HELP, describeSetting, loadSettings, parseCommand, requestFields, unescapeMessage } from "./settings.js";
import { ChatList } from "./sidebar.js";
import { StreamError } from "./sse.js";
import { ChatStore, StorageFull, browserStorage, newChatId, toSftJsonl } from "./store.js";
import { ChatView } from "./view.js";

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const NARROW = window.matchMedia("(max-width: 800px)");

class App {
  constructor() {
    this.storage = browserStorage();
    this.store = new ChatStore(this.storage);
    this.keys = new KeyStore();
    this.api = new Api(() => this.keys.get());
    this.settings = loadSettings(this.storage);
    this.model = null; // {id, demo, maxModelLen} once the gateway is ready
    this.connecting = null;
    this.controller = null; // aborts the reply being written
    this.writing = null; // that reply's promise
    this.blockedUntil = 0; // Date.now() before which sending waits (Retry-After)
    this.countdown = 0;
    this.input = $("input");
    this.view = new ChatView($("messages"), {
      copy: (index, button) => this.copy(this.chat.messages[index].content, button),
      copyCode: (text, button) => this.copy(text, button),
      edit: (index, text) => this.edit(index, text),
      regenerate: (index) => this.regenerate(index),
      retry: () => this.retry(),
    });
    this.list = new ChatList($("chat-list"), {
      select: (id) => this.open(id),
      rename: (id, title) => this.rename(id, title),
      remove: (id) => this.remove(id),
    });
    this.panel = new SettingsPanel(this.settings, this.storage, { onToggle: () => {} });
    const recent = this.store.list()[0];
    this.chat = (recent && this.store.load(recent.id)) || this.freshChat();
  }

  start() {
    this.bind();
    this.toggleSidebar(false);
    if (!this.storage) {
      this.warnStorage("This browser does not let the page store anything: chats last only until the page closes. Export them to keep them.");
    }
    this.list.render(this.store.list(), this.chat.id);
    this.view.render(this.chat, { follow: true });
    this.updateSend();
    this.input.focus();
    this.connect();
  }

  bind() {
    $("composer").addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    this.input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.submit();
      }
    });
    this.input.addEventListener("input", () => this.autosize());
    $("stop").addEventListener("click", () => this.stop());
    $("new-chat").addEventListener("click", () => this.newChat());
    $("toggle-sidebar").addEventListener("click", () => this.toggleSidebar());
    $("scrim").addEventListener("click", () => this.toggleSidebar(false));
    $("export-json").addEventListener("click", () => this.exportJson());
    $("import-json").addEventListener("click", () => $("import-file").click());
    $("import-file").addEventListener("change", (event) => this.importJson(event.target));
    $("export-sft-all").addEventListener("click", () => this.exportSft(this.allChats(), "all"));
    $("export-sft-one").addEventListener("click", () => this.exportSft([this.chat], "chat"));
    document.addEventListener("keydown", (event) => this.shortcut(event));
    window.addEventListener("pagehide", () => this.writing && this.save());
  }

  shortcut(event) {
    const key = event.key.toLowerCase();
    if ((event.ctrlKey || event.metaKey) && event.shiftKey && (key === "n" || key === "o")) {
      event.preventDefault();
      this.newChat();
    } else if (event.key === "Escape" && !document.querySelector("dialog[open]")) {
      if (this.controller) this.stop();
      else if (this.panel.isOpen) this.panel.toggle(false);
      else if (NARROW.matches && $("sidebar").classList.contains("open")) this.toggleSidebar(false);
    }
  }

  // ---------------------------------------------------------------- connecting
  /** Wait for /ready, then read the model; runs once at a time. */
  connect() {
    if (!this.connecting) this.connecting = this.waitForModel().finally(() => (this.connecting = null));
    return this.connecting;
  }

  async waitForModel() {
    this.model = null;
    this.updateSend();
    for (;;) {
      let wait = 2;
      try {
        const ready = await this.api.ready();
        if (ready.ready) {
          this.useModel(await this.api.model());
          return;
        }
        this.setStatus(describeUnready(ready.reason), "wait");
        wait = ready.retryAfter || 1;
      } catch (error) {
        if (error instanceof ApiError && error.kind === "auth") {
          if ((await this.askKey()) == null) {
            this.setStatus("API key needed", "error");
            this.showNotice("This gateway needs an API key. Press Send to enter it.", "warn");
            return;
          }
          continue;
        }
        const unreachable = !(error instanceof ApiError) || error.kind === "network";
        this.setStatus(unreachable ? "cannot reach the gateway, retrying…" : error.message, "error");
      }
      await sleep(Math.max(1, wait) * 1000);
    }
  }

  useModel(model) {
    this.model = model;
    $("model-name").textContent = model.id;
    document.title = `${model.id} · nanochat`;
    $("demo-banner").hidden = !model.demo;
    this.panel.setMaxModelLen(model.maxModelLen);
    this.setStatus("ready", "ok");
    if (!this.blockedUntil) this.hideNotice();
    this.updateSend();
  }

  askKey() {
    const reason = this.keys.get()
      ? "The gateway did not accept this API key. Enter another one."
      : "This gateway asks for an API key. Enter yours to chat.";
    return askForKey(reason, this.keys);
  }

  // ---------------------------------------------------------------- sending
  async submit() {
    if (this.controller) return;
    const text = this.input.value;
    if (!text.trim()) {
      if (this.unanswered()) this.retry();
      return;
    }
    const command = parseCommand(text, this.model && this.model.maxModelLen);
    if (command) {
      this.setInput("");
      this.runCommand(command);
      return;
    }
    if (!this.canSend()) return;
    this.setInput("");
    this.chat.messages.push({ role: "user", content: unescapeMessage(text) });
    await this.generate({ restore: text });
  }

  canSend() {
    if (Date.now() < this.blockedUntil) return false;
    if (!this.model) {
      if (!this.connecting) this.connect();
      this.showNotice("The model is not ready yet; the page sends nothing until it is.", "warn");
      return false;
    }
    return true;
  }

  unanswered() {
    const last = this.chat.messages[this.chat.messages.length - 1];
    return Boolean(last && last.role === "user");
  }

  retry() {
    if (!this.controller && this.unanswered() && this.canSend()) this.generate({});
  }

  async edit(index, text) {
    await this.stopAndWait();
    this.chat.messages.splice(index);
    this.chat.messages.push({ role: "user", content: text });
    this.view.render(this.chat);
    if (this.canSend()) await this.generate({});
    else this.save();
  }

  async regenerate(index) {
    await this.stopAndWait();
    this.chat.messages.splice(index);
    this.view.render(this.chat);
    if (this.unanswered() && this.canSend()) await this.generate({});
    else this.save();
  }

  /** The request's messages: the system prompt, then the turns, same-role neighbours merged. */
  requestMessages() {
    const messages = [];
    if (this.settings.system.trim()) messages.push({ role: "system", content: this.settings.system });
    for (const { role, content } of this.chat.messages) {
      const previous = messages[messages.length - 1];
      if (previous && previous.role === role) previous.content += `\n\n${content}`;
      else messages.push({ role, content });
    }
    return messages;
  }

  /** Stream a reply to the chat's last user message. `restore`: the typed text, put back on refusal. */
  generate({ restore = null }) {
    this.writing = this.write(restore).finally(() => (this.writing = null));
    return this.writing;
  }

  async write(restore) {
    const chat = this.chat;
    chat.system = this.settings.system;
    const body = {
      model: this.model.id,
      messages: this.requestMessages(),
      stream: true,
      stream_options: { include_usage: true },
      ...requestFields(this.settings, this.model.maxModelLen),
    };
    const reply = { role: "assistant", content: "", stats: null };
    chat.messages.push(reply);
    const index = chat.messages.length - 1;
    const controller = new AbortController();
    this.controller = controller;
    this.setBusy(true);
    this.hideNotice();
    this.save();
    this.list.render(this.store.list(), chat.id);
    this.view.render(chat, { streaming: index, follow: true });
    const times = { start: performance.now(), first: null, last: null };
    let finish = null;
    let usage = null;
    try {
      const done = await this.api.chat(body, {
        signal: controller.signal,
        onDelta: (text) => {
          times.last = performance.now();
          if (times.first === null) times.first = times.last;
          reply.content += text;
          this.view.update(index);
        },
        onFinish: (reason) => (finish = reason),
        onUsage: (value) => (usage = value),
      });
      if (!done) {
        finish = "lost";
        this.showNotice("The connection closed before the reply was complete; what arrived is kept.", "error");
      }
    } catch (error) {
      if (controller.signal.aborted) finish = "stopped";
      else if (error instanceof ApiError) return this.refused(error, chat, restore);
      else if (error instanceof StreamError) {
        finish = "error";
        this.showNotice(`The gateway stopped the reply: ${error.message}`, "error");
      } else {
        finish = "lost";
        this.showNotice("The connection to the gateway was lost; the reply so far is kept.", "error");
      }
    } finally {
      if (this.controller === controller) this.controller = null;
      this.setBusy(false);
    }
    if (finish === "stopped" && !reply.content) {
      chat.messages.pop(); // nothing came: as if never asked
      if (restore !== null) this.takeBack(chat, restore);
    } else {
      reply.stats = replyStats(times, usage, finish);
    }
    this.finishWriting(chat);
  }

  finishWriting(chat) {
    this.save();
    if (chat === this.chat) {
      this.view.flush();
      this.view.render(chat);
    }
    this.list.render(this.store.list(), this.chat.id);
  }

  takeBack(chat, restore) {
    chat.messages.pop();
    if (chat === this.chat && !this.input.value) this.setInput(restore);
  }

  /** The gateway answered with an error before the reply began. */
  async refused(error, chat, restore) {
    chat.messages.pop();
    this.controller = null;
    this.setBusy(false);
    if (error.kind === "auth" && (await this.askKey()) != null) return this.write(restore);
    if (restore !== null) this.takeBack(chat, restore);
    this.finishWriting(chat);
    const id = error.requestId ? ` (request ${error.requestId})` : "";
    switch (error.kind) {
      case "auth":
        this.showNotice("This gateway needs an API key to chat. Press Send to enter one.", "warn");
        break;
      case "rate_limit":
        this.block(error.retryAfter, "Too many requests for now.", error.message);
        break;
      case "busy":
        this.block(error.retryAfter, "The gateway is busy: every slot and its queue are taken.");
        break;
      case "loading":
        this.block(error.retryAfter, "The model is still loading.");
        this.connect();
        break;
      case "unavailable":
        this.block(error.retryAfter, `The gateway is unavailable: ${error.message}`);
        break;
      case "network":
        this.showNotice("The gateway cannot be reached. Check that it is running, then send again.", "error");
        break;
      default:
        if (error.code === "model_not_found") this.connect();
        this.showNotice(`${refusalText(error)}${id}`, "error");
    }
  }

  /** No sending for `seconds`, with a countdown; without a Retry-After just say why. */
  block(seconds, message, detail = "") {
    clearInterval(this.countdown);
    if (seconds == null) {
      this.showNotice(detail || message, "error");
      return;
    }
    this.blockedUntil = Date.now() + seconds * 1000;
    const tick = () => {
      const left = Math.ceil((this.blockedUntil - Date.now()) / 1000);
      if (left <= 0) {
        clearInterval(this.countdown);
        this.blockedUntil = 0;
        this.hideNotice();
        this.updateSend();
        return;
      }
      this.showNotice(`${message} You can send again in ${left} s.`, "warn");
      $("send").textContent = `Wait ${left} s`;
    };
    this.countdown = setInterval(tick, 250);
    tick();
    this.updateSend();
  }

  stop() {
    if (this.controller) this.controller.abort();
  }

  async stopAndWait() {
    this.stop();
    if (this.writing) await this.writing;
  }

  // ---------------------------------------------------------------- commands
  runCommand(command) {
    if (command.kind === "help") {
      const lines = command.unknown ? [`Unknown command ${command.unknown}. The commands are:`] : ["Commands and keys:"];
      this.view.note([...lines, ...HELP], command.unknown ? "warn" : "info");
    } else if (command.kind === "clear") {
      this.newChat();
    } else if (command.kind === "error") {
      this.view.note(command.message, "warn");
    } else if (command.kind === "show") {
      this.view.note(describeSetting(command.name, this.settings[command.name]));
    } else {
      this.panel.set(command.name, command.value);
      this.view.note(`${describeSetting(command.name, command.value)} (applies to the next request)`);
    }
  }

  // ---------------------------------------------------------------- chats
  freshChat() {
    const now = Date.now();
    return { id: newChatId(), title: "", created: now, updated: now, system: "", messages: [] };
  }

  /** Save the open chat; a full storage is reported, and the chat stays on screen. */
  save() {
    const chat = this.chat;
    if (!chat.messages.length) {
      // a first message refused by the gateway left nothing to keep
      if (this.store.load(chat.id)) this.store.remove(chat.id);
      return;
    }
    chat.updated = Date.now();
    try {
      this.store.save(chat);
      if (this.storage) $("storage-warning").hidden = true;
    } catch (error) {
      if (!(error instanceof StorageFull)) throw error;
      this.warnStorage(
        "The browser's storage for this page is full, so this chat is NOT saved. Export your chats (menu ☰), then delete some to make room; the chat stays here meanwhile.",
      );
    }
  }

  warnStorage(text) {
    $("storage-warning").textContent = text;
    $("storage-warning").hidden = false;
  }

  async newChat() {
    await this.stopAndWait();
    if (this.chat.messages.length) this.chat = this.freshChat();
    this.view.render(this.chat, { follow: true });
    this.list.render(this.store.list(), this.chat.id);
    this.toggleSidebar(false);
    this.input.focus();
  }

  async open(id) {
    if (id === this.chat.id) return this.toggleSidebar(false);
    await this.stopAndWait();
    const chat = this.store.load(id);
    if (!chat) return this.showNotice("This chat could not be read from the browser's storage.", "error");
    this.chat = chat;
    this.view.render(chat, { follow: true });
    this.list.render(this.store.list(), chat.id);
    this.toggleSidebar(false);
  }

  rename(id, title) {
    if (title) {
      try {
        this.store.rename(id, title);
        if (id === this.chat.id) this.chat.title = title;
      } catch (error) {
        if (!(error instanceof StorageFull)) throw error;
        this.warnStorage("The browser's storage for this page is full: the new name is not saved.");
      }
    }
    this.list.render(this.store.list(), this.chat.id);
  }

  async remove(id) {
    const entry = this.store.list().find((chat) => chat.id === id);
    if (!entry || !(await confirmAction(`Delete “${entry.title}”? This cannot be undone.`))) return;
    if (id === this.chat.id) await this.stopAndWait();
    this.store.remove(id);
    if (id === this.chat.id) {
      const next = this.store.list()[0];
      this.chat = (next && this.store.load(next.id)) || this.freshChat();
      this.view.render(this.chat, { follow: true });
    }
    this.list.render(this.store.list(), this.chat.id);
  }

  /** Every stored chat, with the open one as it is now (it may not be saved). */
  allChats() {
    const chats = this.store.all().filter((chat) => chat.id !== this.chat.id);
    if (this.chat.messages.length) chats.unshift(this.chat);
    return chats;
  }

  exportJson() {
    const document = { ...this.store.exportAll(), chats: this.allChats() };
    download(`nanochat-chats-${today()}.json`, `${JSON.stringify(document, null, 1)}\n`, "application/json");
  }

  exportSft(chats, which) {
    const { text, count, skipped } = toSftJsonl(chats);
    if (!count) {
      this.showNotice(which === "chat" ? "This chat has no complete exchange (a message and its reply) to export yet." : "No chat has a complete exchange to export yet.", "warn");
      return;
    }
    download(`nanochat-sft-${which}-${today()}.jsonl`, text, "application/jsonl");
    this.showNotice(`Exported ${count} conversation${count === 1 ? "" : "s"} as SFT JSONL${skipped ? ` (${skipped} without a complete exchange left out)` : ""}.`, "info");
  }

  async importJson(input) {
    const file = input.files && input.files[0];
    input.value = "";
    if (!file) return;
    try {
      const count = this.store.importAll(JSON.parse(await file.text()));
      this.showNotice(`Imported ${count} chat${count === 1 ? "" : "s"} from ${file.name}.`, "info");
    } catch (error) {
      if (error instanceof StorageFull) {
        this.warnStorage(`The browser's storage for this page is full: only ${error.stored} chats of ${file.name} were imported.`);
      } else {
        this.showNotice(`${file.name} could not be imported: ${error instanceof SyntaxError ? "it is not JSON." : error.message}`, "error");
      }
    }
    const current = this.store.load(this.chat.id);
    if (current && !this.writing) {
      this.chat = current;
      this.view.render(current);
    }
    this.list.render(this.store.list(), this.chat.id);
  }

  // ---------------------------------------------------------------- small things
  async copy(text, button) {
    const ok = await copyText(text);
    const label = button.textContent;
    button.textContent = ok ? "Copied" : "Copy failed";
    setTimeout(() => (button.textContent = label), 1500);
  }

  setBusy(busy) {
    $("send").hidden = busy;
    $("stop").hidden = !busy;
    $("composer").classList.toggle("busy", busy);
    this.updateSend();
  }

  updateSend() {
    const send = $("send");
    const blocked = Date.now() < this.blockedUntil;
    send.disabled = blocked || !this.model;
    if (!blocked) send.textContent = "Send";
  }

  setStatus(text, kind) {
    const status = $("status");
    status.textContent = text;
    status.dataset.kind = kind;
  }

  showNotice(text, kind) {
    const notice = $("notice");
    notice.textContent = text;
    notice.className = `banner ${kind}`;
    notice.hidden = false;
  }

  hideNotice() {
    $("notice").hidden = true;
  }

  setInput(text) {
    this.input.value = text;
    this.autosize();
  }

  autosize() {
    this.input.style.height = "auto";
    this.input.style.height = `${Math.min(this.input.scrollHeight, window.innerHeight * 0.4)}px`;
  }

  /** A narrow screen shows the list as a drawer over the chat; a wide one beside it. */
  toggleSidebar(open) {
    const sidebar = $("sidebar");
    const toggle = $("toggle-sidebar");
    if (!NARROW.matches) {
      if (open === undefined) sidebar.classList.toggle("closed"); // only the button hides a wide list
      toggle.setAttribute("aria-expanded", String(!sidebar.classList.contains("closed")));
      return;
    }
    const want = open === undefined ? !sidebar.classList.contains("open") : open;
    sidebar.classList.toggle("open", want);
    $("scrim").hidden = !want;
    toggle.setAttribute("aria-expanded", String(want));
    if (want) sidebar.querySelector("button")?.focus();
  }
}

function describeUnready(reason) {
  if (reason.startsWith("failed")) return `the model failed to load (${reason.replace(/^failed:\s*/, "")})`;
  if (reason === "shutting down") return "the gateway is shutting down";
  return "model loading…";
}

function refusalText(error) {
  if (error.code === "context_length_exceeded") {
    return "This conversation no longer fits the model's context. Start a new chat, edit an earlier message, or lower max tokens.";
  }
  if (error.code === "model_not_found") return "The gateway now serves another model; send again.";
  if (error.kind === "server") return `The gateway had an error: ${error.message}`;
  return `The gateway refused the request: ${error.message}`;
}

function replyStats(times, usage, finish) {
  const tokens = usage ? usage.completion_tokens : null;
  const ttft = times.first === null ? null : (times.first - times.start) / 1000;
  const span = times.first === null ? 0 : (times.last - times.first) / 1000;
  const tps = tokens > 1 && span > 0 ? (tokens - 1) / span : null;
  return { ttft, tps, tokens, finish };
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // no clipboard API (plain http on another host): the old way
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "offscreen";
    document.body.append(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    return ok;
  }
}

function download(name, text, type) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function today() {
  return new Date().toISOString().slice(0, 10);
}

new App().start();

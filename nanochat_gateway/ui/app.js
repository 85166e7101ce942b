// nanochat's chat page: sends the conversation to this gateway's public API, streams the
// reply into the view, and turns every refusal into plain words (and a countdown where the
// gateway says when to come back). Conversations and settings stay in the browser.

import { Api, ApiError } from "./api.js";
import { Chats } from "./chats.js";
import { Connection } from "./connection.js";
import { KeyStore } from "./dialogs.js";
import { SettingsPanel } from "./panel.js";
import { HELP, describeSetting, loadSettings, parseCommand, requestFields, unescapeMessage } from "./settings.js";
import { StreamError } from "./sse.js";
import { browserStorage } from "./store.js";
import { $, copyText, notice } from "./util.js";
import { ChatView } from "./view.js";

const NARROW = window.matchMedia("(max-width: 800px)");

class App {
  constructor() {
    const storage = browserStorage();
    this.keys = new KeyStore();
    this.api = new Api(() => this.keys.get());
    this.settings = loadSettings(storage);
    this.model = null; // {id, demo, maxModelLen} once the gateway is ready
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
    this.chats = new Chats(storage, {
      show: (chat) => this.view.render(chat, { follow: true }),
      stop: () => this.stopAndWait(),
      closeList: () => this.toggleSidebar(false),
    });
    this.panel = new SettingsPanel(this.settings, storage);
    this.connection = new Connection(this.api, this.keys, (model) => this.useModel(model));
  }

  get chat() {
    return this.chats.current;
  }

  start() {
    this.bind();
    this.toggleSidebar(false);
    this.chats.drawList();
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
    $("export-json").addEventListener("click", () => this.chats.exportJson());
    $("import-json").addEventListener("click", () => $("import-file").click());
    $("import-file").addEventListener("change", (event) => this.chats.importJson(event.target, Boolean(this.writing)));
    $("export-sft-all").addEventListener("click", () => this.chats.exportSft("all"));
    $("export-sft-one").addEventListener("click", () => this.chats.exportSft("chat"));
    document.addEventListener("keydown", (event) => this.shortcut(event));
    window.addEventListener("pagehide", () => this.writing && this.chats.save());
  }

  shortcut(event) {
    const key = event.key.toLowerCase();
    if ((event.ctrlKey || event.metaKey) && event.shiftKey && (key === "n" || key === "o")) {
      event.preventDefault(); // Ctrl+Shift+O too: some browsers keep Ctrl+Shift+N for themselves
      this.newChat();
    } else if (event.key === "Escape" && !document.querySelector("dialog[open]")) {
      if (this.controller) this.stop();
      else if (this.panel.isOpen) this.panel.toggle(false);
      else if (NARROW.matches && $("sidebar").classList.contains("open")) this.toggleSidebar(false);
    }
  }

  async newChat() {
    await this.chats.newChat();
    this.input.focus();
  }

  connect() {
    if (!this.connection.connecting) {
      this.model = null;
      this.updateSend();
    }
    return this.connection.connect();
  }

  useModel(model) {
    this.model = model;
    $("model-name").textContent = model.id;
    document.title = `${model.id} · nanochat`;
    $("demo-banner").hidden = !model.demo;
    this.panel.setMaxModelLen(model.maxModelLen);
    if (!this.blockedUntil) notice(null);
    this.updateSend();
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
    await this.generate(text);
  }

  canSend() {
    if (Date.now() < this.blockedUntil) return false;
    if (!this.model) {
      this.connect();
      notice("The model is not ready yet; the page sends nothing until it is.", "warn");
      return false;
    }
    return true;
  }

  unanswered() {
    const last = this.chat.messages[this.chat.messages.length - 1];
    return Boolean(last && last.role === "user");
  }

  retry() {
    if (!this.controller && this.unanswered() && this.canSend()) this.generate();
  }

  async edit(index, text) {
    await this.stopAndWait();
    this.chat.messages.splice(index);
    this.chat.messages.push({ role: "user", content: text });
    await this.answerOrKeep();
  }

  async regenerate(index) {
    await this.stopAndWait();
    this.chat.messages.splice(index);
    await this.answerOrKeep();
  }

  async answerOrKeep() {
    this.view.render(this.chat);
    if (this.unanswered() && this.canSend()) await this.generate();
    else this.chats.save();
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

  /** Stream a reply to the last user message. `typed`: the text sent, put back if refused. */
  generate(typed = null) {
    this.writing = this.write(typed).finally(() => (this.writing = null));
    return this.writing;
  }

  async write(typed) {
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
    notice(null);
    this.chats.save();
    this.chats.drawList();
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
        notice("The connection closed before the reply was complete; what arrived is kept.", "error");
      }
    } catch (error) {
      if (controller.signal.aborted) finish = "stopped";
      else if (error instanceof ApiError) return this.refused(error, typed);
      else if (error instanceof StreamError) {
        finish = "error";
        notice(`The gateway stopped the reply: ${error.message}`, "error");
      } else {
        finish = "lost";
        notice("The connection to the gateway was lost; the reply so far is kept.", "error");
      }
    } finally {
      if (this.controller === controller) this.controller = null;
      this.setBusy(false);
    }
    if (finish === "stopped" && !reply.content) {
      chat.messages.pop(); // nothing came: as if never asked
      if (typed !== null) this.takeBack(typed);
    } else {
      reply.stats = replyStats(times, usage, finish);
    }
    this.finishWriting();
  }

  finishWriting() {
    this.chats.save();
    this.view.flush();
    this.view.render(this.chat);
    this.chats.drawList();
  }

  takeBack(typed) {
    this.chat.messages.pop();
    if (!this.input.value) this.setInput(typed);
  }

  /** The gateway answered with an error before the reply began. */
  async refused(error, typed) {
    this.chat.messages.pop();
    this.controller = null;
    this.setBusy(false);
    if (error.kind === "auth" && (await this.connection.askKey()) != null) return this.write(typed);
    if (typed !== null) this.takeBack(typed);
    this.finishWriting();
    if (error.kind === "auth") notice("This gateway needs an API key to chat. Press Send to enter one.", "warn");
    else if (error.kind === "rate_limit") this.block(error.retryAfter, "Too many requests for now.", error.message);
    else if (error.kind === "busy") this.block(error.retryAfter, "The gateway is busy: every slot and its queue are taken.");
    else if (error.kind === "unavailable") this.block(error.retryAfter, `The gateway is unavailable: ${error.message}`);
    else if (error.kind === "loading") {
      this.block(error.retryAfter, "The model is still loading.");
      this.connect();
    } else if (error.kind === "network") {
      notice("The gateway cannot be reached. Check that it is running, then send again.", "error");
    } else {
      if (error.code === "model_not_found") this.connect();
      notice(`${refusalText(error)}${error.requestId ? ` (request ${error.requestId})` : ""}`, "error");
    }
  }

  /** No sending for `seconds`, with a countdown; without a Retry-After just say why. */
  block(seconds, message, detail = "") {
    clearInterval(this.countdown);
    if (seconds == null) return notice(detail || message, "error");
    this.blockedUntil = Date.now() + seconds * 1000;
    const tick = () => {
      const left = Math.ceil((this.blockedUntil - Date.now()) / 1000);
      if (left <= 0) {
        clearInterval(this.countdown);
        this.blockedUntil = 0;
        notice(null);
        this.updateSend();
        return;
      }
      notice(`${message} You can send again in ${left} s.`, "warn");
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

  // ---------------------------------------------------------------- the page around
  async copy(text, button) {
    const ok = await copyText(text);
    const label = button.textContent;
    button.textContent = ok ? "Copied" : "Copy failed";
    setTimeout(() => (button.textContent = label), 1500);
  }

  setBusy(busy) {
    $("send").hidden = busy;
    $("stop").hidden = !busy;
    this.updateSend();
  }

  updateSend() {
    const send = $("send");
    const blocked = Date.now() < this.blockedUntil;
    send.disabled = blocked || !this.model;
    if (!blocked) send.textContent = "Send";
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

new App().start();

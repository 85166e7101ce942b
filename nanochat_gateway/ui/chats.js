// The conversations: the open one, the ones kept in the browser, moving between them,
// and taking them out of (or into) the browser as files.

import { confirmAction } from "./dialogs.js";
import { ChatList } from "./sidebar.js";
import { ChatStore, StorageFull, newChatId, toSftJsonl } from "./store.js";
import { $, download, notice, plural, today } from "./util.js";

const FULL = "The browser's storage for this page is full";

export function freshChat() {
  const now = Date.now();
  return { id: newChatId(), title: "", created: now, updated: now, system: "", messages: [] };
}

export class Chats {
  /** page: {show(chat), stop() -> Promise once no reply is being written, closeList()} */
  constructor(storage, page) {
    this.storage = storage;
    this.store = new ChatStore(storage);
    this.page = page;
    this.list = new ChatList($("chat-list"), {
      select: (id) => this.open(id),
      rename: (id, title) => this.rename(id, title),
      remove: (id) => this.remove(id),
    });
    const recent = this.store.list()[0];
    this.current = (recent && this.store.load(recent.id)) || freshChat();
    if (!storage) {
      this.warn("This browser does not let the page store anything: chats last until the page closes. Export them to keep them.");
    }
  }

  drawList() {
    this.list.render(this.store.list(), this.current.id);
  }

  /** Save the open chat; a full storage is reported, and the chat stays on screen. */
  save() {
    const chat = this.current;
    if (!chat.messages.length) {
      // a first message the gateway refused leaves nothing to keep
      if (this.store.load(chat.id)) this.store.remove(chat.id);
      return;
    }
    chat.updated = Date.now();
    try {
      this.store.save(chat);
      if (this.storage) $("storage-warning").hidden = true;
    } catch (error) {
      if (!(error instanceof StorageFull)) throw error;
      this.warn(`${FULL}, so this chat is NOT saved. Export your chats (menu ☰), then delete some to make room; the chat stays here meanwhile.`);
    }
  }

  warn(text) {
    $("storage-warning").textContent = text;
    $("storage-warning").hidden = false;
  }

  async newChat() {
    await this.page.stop();
    if (this.current.messages.length) this.current = freshChat();
    this.show();
  }

  async open(id) {
    if (id !== this.current.id) {
      await this.page.stop();
      const chat = this.store.load(id);
      if (!chat) return notice("This chat could not be read from the browser's storage.", "error");
      this.current = chat;
    }
    this.show();
  }

  show() {
    this.page.show(this.current);
    this.drawList();
    this.page.closeList();
  }

  rename(id, title) {
    if (title) {
      try {
        this.store.rename(id, title);
        if (id === this.current.id) this.current.title = title;
      } catch (error) {
        if (!(error instanceof StorageFull)) throw error;
        this.warn(`${FULL}: the new name is not saved.`);
      }
    }
    this.drawList();
  }

  async remove(id) {
    const entry = this.store.list().find((chat) => chat.id === id);
    if (!entry || !(await confirmAction(`Delete “${entry.title}”? This cannot be undone.`))) return;
    const open = id === this.current.id;
    if (open) await this.page.stop();
    this.store.remove(id);
    if (open) {
      const next = this.store.list()[0];
      this.current = (next && this.store.load(next.id)) || freshChat();
      this.page.show(this.current);
    }
    this.drawList();
  }

  /** Every stored chat, with the open one as it is now (it may not be saved). */
  all() {
    const chats = this.store.all().filter((chat) => chat.id !== this.current.id);
    if (this.current.messages.length) chats.unshift(this.current);
    return chats;
  }

  exportJson() {
    const backup = { ...this.store.exportAll(), chats: this.all() };
    download(`nanochat-chats-${today()}.json`, `${JSON.stringify(backup, null, 1)}\n`, "application/json");
  }

  /** which: "all" chats or this "chat", as nanochat SFT conversations. */
  exportSft(which) {
    const { text, count, skipped } = toSftJsonl(which === "all" ? this.all() : [this.current]);
    if (!count) {
      const whose = which === "all" ? "No chat has" : "This chat has";
      return notice(`${whose} a complete exchange (a message and its reply) to export yet.`, "warn");
    }
    download(`nanochat-sft-${which}-${today()}.jsonl`, text, "application/jsonl");
    const left = skipped ? ` (${skipped} without a complete exchange left out)` : "";
    notice(`Exported ${plural(count, "conversation")} as SFT JSONL${left}.`, "info");
  }

  /** Add the chats of an exported file; `busy`: a reply is being written to the open chat. */
  async importJson(input, busy) {
    const file = input.files && input.files[0];
    input.value = "";
    if (!file) return;
    try {
      const count = this.store.importAll(JSON.parse(await file.text()));
      notice(`Imported ${plural(count, "chat")} from ${file.name}.`, "info");
    } catch (error) {
      if (error instanceof StorageFull) {
        this.warn(`${FULL}: only ${plural(error.stored, "chat")} of ${file.name} could be imported.`);
      } else {
        const why = error instanceof SyntaxError ? "it is not JSON." : error.message;
        notice(`${file.name} could not be imported: ${why}`, "error");
      }
    }
    const replaced = this.store.load(this.current.id);
    if (replaced && !busy) {
      this.current = replaced;
      this.page.show(replaced);
    }
    this.drawList();
  }
}

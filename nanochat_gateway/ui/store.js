// Conversations kept in the browser (localStorage): one key per chat plus an index, so a
// write touches one chat. A full quota raises StorageFull for the page to show, never a
// silent loss. Also the two file formats: a JSON backup of every chat, and nanochat's SFT
// JSONL (one JSON array of alternating user/assistant messages per line, as CustomJSON reads).

const INDEX_KEY = "ncg.chats";
const CHAT_PREFIX = "ncg.chat.";
export const EXPORT_FORMAT = "nanochat-gateway.chats";

export class StorageFull extends Error {
  constructor(message = "The browser's storage for this page is full.") {
    super(message);
    this.name = "StorageFull";
  }
}

/** localStorage, or null where the browser refuses it (some private modes, disabled storage). */
export function browserStorage(kind = "localStorage") {
  try {
    const storage = window[kind];
    const probe = "ncg.probe";
    storage.setItem(probe, "1");
    storage.removeItem(probe);
    return storage;
  } catch {
    return null;
  }
}

export function newChatId() {
  return `c${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
}

/** A chat's title from its first user message. */
export function titleOf(chat) {
  if (chat.title) return chat.title;
  const first = chat.messages.find((m) => m.role === "user");
  const text = first ? first.content.replace(/\s+/g, " ").trim() : "";
  return text ? (text.length > 60 ? `${text.slice(0, 57)}…` : text) : "New chat";
}

export class ChatStore {
  constructor(storage) {
    this.storage = storage; // null: chats live only as long as the page
    this.memory = new Map();
  }

  /** Summaries {id, title, updated}, most recent first. */
  list() {
    const chats = this.storage ? this.readIndex() : [...this.memory.values()].map(summary);
    return chats.sort((a, b) => b.updated - a.updated);
  }

  load(id) {
    if (!this.storage) return this.memory.get(id) || null;
    try {
      const chat = JSON.parse(this.storage.getItem(CHAT_PREFIX + id));
      return isChat(chat) ? chat : null;
    } catch {
      return null;
    }
  }

  /** Save (or replace) a chat; throws StorageFull when the browser refuses the write. */
  save(chat) {
    if (!this.storage) {
      this.memory.set(chat.id, chat);
      return;
    }
    const index = this.readIndex().filter((entry) => entry.id !== chat.id);
    index.push(summary(chat));
    write(this.storage, CHAT_PREFIX + chat.id, JSON.stringify(chat));
    write(this.storage, INDEX_KEY, JSON.stringify(index));
  }

  remove(id) {
    if (!this.storage) {
      this.memory.delete(id);
      return;
    }
    this.storage.removeItem(CHAT_PREFIX + id);
    const index = this.readIndex().filter((entry) => entry.id !== id);
    write(this.storage, INDEX_KEY, JSON.stringify(index));
  }

  rename(id, title) {
    const chat = this.load(id);
    if (!chat) return;
    chat.title = title.trim();
    this.save(chat);
  }

  readIndex() {
    try {
      const index = JSON.parse(this.storage.getItem(INDEX_KEY) || "[]");
      return Array.isArray(index) ? index.filter((entry) => entry && typeof entry.id === "string") : [];
    } catch {
      return [];
    }
  }

  all() {
    return this.list().map((entry) => this.load(entry.id)).filter(Boolean);
  }

  /** Every chat as one JSON document. */
  exportAll() {
    return { format: EXPORT_FORMAT, version: 1, exported: new Date().toISOString(), chats: this.all() };
  }

  /**
   * Add the chats of an export (a chat with the same id is replaced by the file's version).
   * Returns how many were stored; throws Error for a file that is not an export, StorageFull
   * (with .stored) when the browser ran out of room part way.
   */
  importAll(document) {
    const chats = Array.isArray(document) ? document : document && document.chats;
    if (!Array.isArray(chats)) throw new Error("This file is not a chat export (no list of chats in it).");
    const valid = chats.filter(isChat);
    if (valid.length < chats.length) {
      throw new Error(`${chats.length - valid.length} of the ${chats.length} chats in this file are not valid chats.`);
    }
    let stored = 0;
    for (const chat of valid) {
      try {
        this.save(chat);
      } catch (error) {
        if (error instanceof StorageFull) error.stored = stored;
        throw error;
      }
      stored++;
    }
    return stored;
  }
}

function write(storage, key, value) {
  try {
    storage.setItem(key, value);
  } catch (error) {
    if (error && (error.name === "QuotaExceededError" || error.code === 22)) throw new StorageFull();
    throw error;
  }
}

function summary(chat) {
  return { id: chat.id, title: titleOf(chat), updated: chat.updated };
}

function isChat(chat) {
  return Boolean(
    chat && typeof chat.id === "string" && chat.id && Array.isArray(chat.messages) &&
      typeof chat.updated === "number" &&
      chat.messages.every((m) => m && (m.role === "user" || m.role === "assistant") && typeof m.content === "string"),
  );
}

/**
 * One chat as nanochat SFT conversation lines: user/assistant messages alternating, starting
 * with the user and ending with a reply (an unanswered or empty turn ends the conversation).
 * A system prompt goes in front of the first user message, as nanochat's chat format does.
 * Returns the JSON array, or null when no complete exchange is left.
 */
export function sftConversation(chat) {
  const messages = [];
  for (const message of chat.messages) {
    const expected = messages.length % 2 === 0 ? "user" : "assistant";
    if (message.role !== expected || !message.content.trim()) break;
    messages.push({ role: message.role, content: message.content });
  }
  if (messages.length % 2 === 1) messages.pop();
  if (messages.length < 2) return null;
  if (chat.system && chat.system.trim()) messages[0].content = `${chat.system}\n\n${messages[0].content}`;
  return messages;
}

/** Chats as SFT JSONL text (one conversation per line) and how many were left out. */
export function toSftJsonl(chats) {
  const lines = [];
  for (const chat of chats) {
    const conversation = sftConversation(chat);
    if (conversation) lines.push(JSON.stringify(conversation));
  }
  return { text: lines.length ? `${lines.join("\n")}\n` : "", count: lines.length, skipped: chats.length - lines.length };
}

// The conversation view: messages, their actions and statistics, edit in place, notes.
// A streaming reply is redrawn at most once per animation frame, however fast tokens come,
// and the view follows the stream only while it is scrolled to the bottom.

import { renderMarkdown } from "./markdown.js";
import { onEditKeys } from "./util.js";

const FINISH_TEXT = {
  stop: "finished",
  length: "cut at max tokens",
  stopped: "stopped by you",
  error: "ended by an error",
  lost: "connection lost",
};
const BOTTOM_SLACK_PX = 48;

/** "0.21 s to first token · 48.0 tokens/s · 96 tokens · cut at max tokens" */
export function formatStats(stats) {
  if (!stats) return "";
  const parts = [];
  if (stats.ttft != null) parts.push(`${stats.ttft.toFixed(2)} s to first token`);
  if (stats.tps != null) parts.push(`${stats.tps.toFixed(1)} tokens/s`);
  if (stats.tokens != null) parts.push(`${stats.tokens} token${stats.tokens === 1 ? "" : "s"}`);
  if (stats.finish) parts.push(FINISH_TEXT[stats.finish] || stats.finish);
  return parts.join(" · ");
}

function button(label, action, title = label) {
  const element = document.createElement("button");
  element.type = "button";
  element.className = "msg-action";
  element.dataset.action = action;
  element.textContent = label;
  element.title = title;
  return element;
}

export class ChatView {
  /** actions: {copy(index, button), edit(index, text), regenerate(index), retry(), copyCode(text, button)} */
  constructor(container, actions) {
    this.container = container;
    this.actions = actions;
    this.chat = null;
    this.streaming = -1; // index of the reply being written, or -1
    this.dirty = new Set();
    this.frame = 0;
    this.stick = true;
    container.addEventListener("scroll", () => {
      this.stick = this.atBottom();
    });
    container.addEventListener("click", (event) => this.onClick(event));
  }

  atBottom() {
    const c = this.container;
    return c.scrollHeight - c.scrollTop - c.clientHeight <= BOTTOM_SLACK_PX;
  }

  scrollToBottom() {
    this.container.scrollTop = this.container.scrollHeight;
  }

  /** Draw the whole chat (on switching chats, editing, or when a reply ends). */
  render(chat, { streaming = -1, follow = false } = {}) {
    this.chat = chat;
    this.streaming = streaming;
    this.dirty.clear();
    const stick = follow || this.stick;
    this.container.replaceChildren(...chat.messages.map((message, index) => this.messageElement(message, index)));
    if (!chat.messages.length) this.container.append(this.emptyState());
    if (stick) this.scrollToBottom();
    this.stick = stick;
  }

  /** Redraw message `index` at the next animation frame. */
  update(index) {
    this.dirty.add(index);
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  /** Apply pending redraws now. */
  flush() {
    if (this.frame) cancelAnimationFrame(this.frame);
    this.frame = 0;
    const stick = this.stick;
    for (const index of this.dirty) {
      const old = this.container.querySelector(`article[data-index="${index}"]`);
      const message = this.chat && this.chat.messages[index];
      if (old && message) old.replaceWith(this.messageElement(message, index));
    }
    this.dirty.clear();
    if (stick) this.scrollToBottom();
  }

  /** A note in the conversation that is not part of it (help, command results). */
  note(lines, kind = "info") {
    const note = document.createElement("div");
    note.className = `note note-${kind}`;
    note.setAttribute("role", "status");
    for (const line of [].concat(lines)) {
      const row = document.createElement("div");
      if (Array.isArray(line)) {
        const command = document.createElement("code");
        command.textContent = line[0];
        row.append(command, ` ${line[1]}`);
      } else {
        row.textContent = line;
      }
      note.append(row);
    }
    this.container.querySelector(".empty")?.remove();
    this.container.append(note);
    this.scrollToBottom();
    this.stick = true;
  }

  emptyState() {
    const empty = document.createElement("div");
    empty.className = "empty";
    empty.textContent = "Ask anything. Type /help for commands.";
    return empty;
  }

  messageElement(message, index) {
    const article = document.createElement("article");
    article.className = `msg ${message.role}`;
    article.dataset.index = String(index);
    const writing = index === this.streaming;
    if (writing) article.classList.add("writing");
    const who = document.createElement("div");
    who.className = "msg-who";
    who.textContent = message.role === "user" ? "You" : "Model";
    const body = document.createElement("div");
    body.className = "msg-body";
    if (message.role === "user") body.textContent = message.content;
    else body.append(renderMarkdown(message.content));
    article.append(who, body);
    if (message.role === "assistant") {
      const meta = document.createElement("div");
      meta.className = "msg-meta";
      meta.textContent = writing ? "writing…" : formatStats(message.stats);
      article.append(meta);
    }
    if (!writing) article.append(this.actionBar(message, index));
    return article;
  }

  actionBar(message, index) {
    const bar = document.createElement("div");
    bar.className = "msg-actions";
    bar.append(button("Copy", "copy", "Copy this message"));
    if (message.role === "user") {
      bar.append(button("Edit", "edit", "Edit this message and regenerate the reply"));
      const last = index === this.chat.messages.length - 1;
      if (last && this.streaming < 0) bar.append(button("Retry", "retry", "Ask for a reply again"));
    } else {
      bar.append(button("Regenerate", "regenerate", "Write this reply again"));
    }
    return bar;
  }

  onClick(event) {
    const target = event.target.closest("button");
    if (!target || !this.container.contains(target)) return;
    if (target.classList.contains("copy-code")) {
      const code = target.closest(".code-block").querySelector("code");
      this.actions.copyCode(code.textContent, target);
      return;
    }
    const article = target.closest("article[data-index]");
    if (!article) return;
    const index = Number(article.dataset.index);
    const action = target.dataset.action;
    if (action === "copy") this.actions.copy(index, target);
    else if (action === "regenerate") this.actions.regenerate(index);
    else if (action === "retry") this.actions.retry();
    else if (action === "edit") this.startEdit(article, index);
  }

  // Edit in place: Enter saves (and regenerates), Shift+Enter is a new line, Esc cancels.
  startEdit(article, index) {
    const message = this.chat.messages[index];
    const editor = document.createElement("div");
    editor.className = "msg-editor";
    const area = document.createElement("textarea");
    area.value = message.content;
    area.rows = Math.min(12, Math.max(2, message.content.split("\n").length));
    area.setAttribute("aria-label", "Edit message");
    const save = button("Save and regenerate", "save-edit");
    save.classList.add("primary");
    const cancel = button("Cancel", "cancel-edit");
    const bar = document.createElement("div");
    bar.className = "msg-actions";
    bar.append(save, cancel);
    editor.append(area, bar);
    article.querySelector(":scope > .msg-actions")?.remove();
    article.querySelector(".msg-body").replaceWith(editor);
    const finish = (keep) => {
      if (keep && area.value.trim()) this.actions.edit(index, area.value);
      else this.render(this.chat);
    };
    save.addEventListener("click", (event) => {
      event.stopPropagation();
      finish(true);
    });
    cancel.addEventListener("click", (event) => {
      event.stopPropagation();
      finish(false);
    });
    onEditKeys(area, finish);
    area.focus();
    area.setSelectionRange(area.value.length, area.value.length);
  }
}

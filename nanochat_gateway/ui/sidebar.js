// The list of conversations: pick one, rename it in place, delete it.

import { onEditKeys } from "./util.js";

export class ChatList {
  /** actions: {select(id), rename(id, title), remove(id)} */
  constructor(list, actions) {
    this.list = list;
    this.actions = actions;
    list.addEventListener("click", (event) => this.onClick(event));
  }

  /** chats: summaries {id, title}; current: the open chat's id. */
  render(chats, current) {
    if (!chats.length) {
      const empty = document.createElement("li");
      empty.className = "chat-empty";
      empty.textContent = "No saved chats yet.";
      this.list.replaceChildren(empty);
      return;
    }
    this.list.replaceChildren(...chats.map((chat) => this.item(chat, chat.id === current)));
  }

  item(chat, current) {
    const item = document.createElement("li");
    item.className = "chat-item";
    item.dataset.id = chat.id;
    const open = document.createElement("button");
    open.type = "button";
    open.className = "chat-open";
    open.dataset.action = "open";
    open.textContent = chat.title;
    open.title = chat.title;
    if (current) {
      item.classList.add("current");
      open.setAttribute("aria-current", "true");
    }
    const rename = document.createElement("button");
    rename.type = "button";
    rename.className = "icon small";
    rename.dataset.action = "rename";
    rename.textContent = "✎";
    rename.title = "Rename";
    rename.setAttribute("aria-label", `Rename ${chat.title}`);
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "icon small";
    remove.dataset.action = "delete";
    remove.append(trashIcon());
    remove.title = "Delete";
    remove.setAttribute("aria-label", `Delete ${chat.title}`);
    item.append(open, rename, remove);
    return item;
  }

  onClick(event) {
    const target = event.target.closest("button[data-action]");
    const item = target && target.closest("li[data-id]");
    if (!item) return;
    const id = item.dataset.id;
    if (target.dataset.action === "open") this.actions.select(id);
    else if (target.dataset.action === "rename") this.startRename(item, id);
    else if (target.dataset.action === "delete") this.actions.remove(id);
  }

  // Enter or leaving the field saves, Esc cancels.
  startRename(item, id) {
    const open = item.querySelector(".chat-open");
    const input = document.createElement("input");
    input.type = "text";
    input.className = "chat-rename";
    input.value = open.textContent;
    input.setAttribute("aria-label", "Chat name");
    let done = false;
    const finish = (keep) => {
      if (done) return;
      done = true;
      if (keep && input.value.trim()) this.actions.rename(id, input.value.trim());
      else this.actions.rename(id, null);
    };
    onEditKeys(input, finish);
    input.addEventListener("blur", () => finish(true));
    open.replaceWith(input);
    input.focus();
    input.select();
  }
}

// A bin drawn in SVG: emoji fonts are missing on many systems.
function trashIcon() {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("width", "14");
  svg.setAttribute("height", "14");
  svg.setAttribute("aria-hidden", "true");
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", "M4 7h16M9 7V4h6v3M6 7l1 13h10l1-13M10 11v6M14 11v6");
  path.setAttribute("fill", "none");
  path.setAttribute("stroke", "currentColor");
  path.setAttribute("stroke-width", "2");
  path.setAttribute("stroke-linecap", "round");
  svg.append(path);
  return svg;
}

// The API key (kept for this tab in sessionStorage, or in localStorage when "remember" is
// ticked) and the two small dialogs: asking for the key, confirming a deletion.

import { browserStorage } from "./store.js";

const KEY_NAME = "ncg.apiKey";

export class KeyStore {
  constructor() {
    this.session = browserStorage("sessionStorage");
    this.local = browserStorage("localStorage");
    this.memory = "";
  }

  get() {
    return (this.session && this.session.getItem(KEY_NAME)) || (this.local && this.local.getItem(KEY_NAME)) || this.memory;
  }

  set(key, remember) {
    this.clear();
    this.memory = key;
    try {
      const storage = remember ? this.local : this.session;
      if (storage) storage.setItem(KEY_NAME, key);
    } catch {
      // kept in memory for this page only
    }
  }

  clear() {
    this.memory = "";
    for (const storage of [this.session, this.local]) if (storage) storage.removeItem(KEY_NAME);
  }
}

let keyPrompt = null; // the open key dialog's promise: callers that meet a 401 together share it

/** Show the key dialog; resolves to the key typed, or null when cancelled. */
export function askForKey(reason, keys) {
  if (!keyPrompt) keyPrompt = promptForKey(reason, keys).finally(() => (keyPrompt = null));
  return keyPrompt;
}

function promptForKey(reason, keys) {
  const dialog = document.getElementById("key-dialog");
  const form = document.getElementById("key-form");
  const input = document.getElementById("key-input");
  const remember = document.getElementById("key-remember");
  document.getElementById("key-reason").textContent = reason;
  input.value = "";
  remember.checked = Boolean(keys.local && keys.local.getItem(KEY_NAME));
  return new Promise((resolve) => {
    const done = (key) => {
      form.removeEventListener("submit", onSubmit);
      dialog.removeEventListener("cancel", onCancel);
      cancelButton.removeEventListener("click", onCancel);
      if (dialog.open) dialog.close();
      resolve(key);
    };
    const onSubmit = (event) => {
      event.preventDefault();
      const key = input.value.trim();
      if (!key) return;
      keys.set(key, remember.checked);
      done(key);
    };
    const onCancel = (event) => {
      event.preventDefault();
      done(null);
    };
    const cancelButton = document.getElementById("key-cancel");
    form.addEventListener("submit", onSubmit);
    dialog.addEventListener("cancel", onCancel);
    cancelButton.addEventListener("click", onCancel);
    if (!dialog.open) dialog.showModal();
    input.focus();
  });
}

/** Ask "are you sure?"; resolves to true or false. */
export function confirmAction(text, okLabel = "Delete") {
  const dialog = document.getElementById("confirm-dialog");
  const form = document.getElementById("confirm-form");
  const cancel = document.getElementById("confirm-cancel");
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = okLabel;
  return new Promise((resolve) => {
    const done = (answer) => {
      form.removeEventListener("submit", onOk);
      cancel.removeEventListener("click", onCancel);
      dialog.removeEventListener("cancel", onCancel);
      if (dialog.open) dialog.close();
      resolve(answer);
    };
    const onOk = (event) => {
      event.preventDefault();
      done(true);
    };
    const onCancel = (event) => {
      event.preventDefault();
      done(false);
    };
    form.addEventListener("submit", onOk);
    cancel.addEventListener("click", onCancel);
    dialog.addEventListener("cancel", onCancel);
    dialog.showModal();
    cancel.focus();
  });
}

// The API key (kept for this tab in sessionStorage, or in localStorage when "remember" is
// ticked) and the two small dialogs: asking for the key, confirming a deletion.

import { browserStorage } from "./store.js";
import { $ } from "./util.js";

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
  const input = $("key-input");
  const remember = $("key-remember");
  $("key-reason").textContent = reason;
  input.value = "";
  remember.checked = Boolean(keys.local && keys.local.getItem(KEY_NAME));
  const asked = modal("key", () => {
    const key = input.value.trim();
    if (key) keys.set(key, remember.checked);
    return key || undefined;
  });
  input.focus();
  return asked;
}

/** Ask "are you sure?"; resolves to true or false. */
export async function confirmAction(text, okLabel = "Delete") {
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = okLabel;
  const answer = modal("confirm", () => true);
  $("confirm-cancel").focus();
  return (await answer) === true;
}

/**
 * Show the dialog `<name>-dialog` until its form is submitted or it is cancelled (its Cancel
 * button, Esc). accept() gives the value to resolve with, or undefined to stay open; a cancel
 * resolves with null.
 */
function modal(name, accept) {
  const dialog = $(`${name}-dialog`);
  const form = $(`${name}-form`);
  const cancel = $(`${name}-cancel`);
  return new Promise((resolve) => {
    const done = (value) => {
      form.removeEventListener("submit", onSubmit);
      cancel.removeEventListener("click", onCancel);
      dialog.removeEventListener("cancel", onCancel);
      if (dialog.open) dialog.close();
      resolve(value);
    };
    const onSubmit = (event) => {
      event.preventDefault();
      const value = accept();
      if (value !== undefined) done(value);
    };
    const onCancel = (event) => {
      event.preventDefault();
      done(null);
    };
    form.addEventListener("submit", onSubmit);
    cancel.addEventListener("click", onCancel);
    dialog.addEventListener("cancel", onCancel);
    if (!dialog.open) dialog.showModal();
  });
}

// The settings panel behind the gear: each field is checked as it changes, saved at once,
// and used by the next request. Slash commands change the same settings through set().

import { DEFAULTS, checkSetting, saveSettings } from "./settings.js";

const FIELDS = ["temperature", "topK", "topP", "maxTokens", "seed", "system"];

export class SettingsPanel {
  constructor(settings, storage) {
    this.settings = settings;
    this.storage = storage;
    this.maxModelLen = null;
    this.panel = document.getElementById("settings");
    this.error = document.getElementById("settings-error");
    this.button = document.getElementById("open-settings");
    for (const name of FIELDS) {
      const input = this.input(name);
      input.addEventListener("input", () => this.fromField(name));
      input.addEventListener("change", () => this.fromField(name, true));
    }
    document.getElementById("settings-form").addEventListener("submit", (event) => event.preventDefault());
    document.getElementById("reset-settings").addEventListener("click", () => {
      for (const name of FIELDS) this.settings[name] = DEFAULTS[name];
      this.save();
      this.fill();
    });
    this.button.addEventListener("click", () => this.toggle());
    document.getElementById("close-settings").addEventListener("click", () => this.toggle(false));
    this.fill();
  }

  input(name) {
    return document.getElementById(`set-${name}`);
  }

  get isOpen() {
    return !this.panel.hidden;
  }

  toggle(open = !this.isOpen) {
    this.panel.hidden = !open;
    this.button.setAttribute("aria-expanded", String(open));
    if (open) this.input("temperature").focus();
    else if (this.panel.contains(document.activeElement) || document.activeElement === document.body) this.button.focus();
  }

  /** The model's context bounds max tokens. */
  setMaxModelLen(maxModelLen) {
    this.maxModelLen = maxModelLen;
    const input = this.input("maxTokens");
    if (maxModelLen) input.max = String(maxModelLen);
    document.getElementById("max-tokens-hint").textContent = maxModelLen ? `1 to ${maxModelLen}` : "";
  }

  fill() {
    for (const name of FIELDS) {
      const value = this.settings[name];
      this.input(name).value = value == null ? "" : String(value);
      this.input(name).removeAttribute("aria-invalid");
    }
    document.getElementById("out-temperature").textContent = String(this.settings.temperature);
    this.error.textContent = "";
  }

  // While typing, a half-written number is left alone; on change it is checked and reported.
  fromField(name, final = false) {
    const input = this.input(name);
    const checked = checkSetting(name, input.value, this.maxModelLen);
    if (checked.error) {
      if (final) {
        input.setAttribute("aria-invalid", "true");
        this.error.textContent = checked.error;
      }
      return;
    }
    input.removeAttribute("aria-invalid");
    this.error.textContent = "";
    this.set(name, checked.value);
  }

  /** Change one setting (already checked), save, and show it. */
  set(name, value) {
    this.settings[name] = value;
    this.save();
    if (document.activeElement !== this.input(name)) this.input(name).value = value == null ? "" : String(value);
    if (name === "temperature") document.getElementById("out-temperature").textContent = String(value);
  }

  save() {
    if (!saveSettings(this.storage, this.settings)) {
      this.error.textContent = "The browser did not save the settings: they last until the page closes.";
    }
  }
}

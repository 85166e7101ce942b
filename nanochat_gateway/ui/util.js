// Small browser chores: waiting, the clipboard, downloads, one shared status line.

export const $ = (id) => document.getElementById(id);

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** The banner under the top bar: kind is "info", "warn" or "error"; null text hides it. */
export function notice(text, kind = "info") {
  const banner = $("notice");
  banner.hidden = text == null;
  if (text == null) return;
  banner.textContent = text;
  banner.className = `banner ${kind}`;
}

/** In a field edited in place: Enter (without Shift) calls done(true), Esc done(false). */
export function onEditKeys(field, done) {
  field.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      done(true);
    } else if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation(); // the page's Esc (stop, close a panel) is not meant
      done(false);
    }
  });
}

/** Copy text; true when it worked. */
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // no clipboard API (plain http to another host): the old way
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

/** Offer text as a file to save. */
export function download(name, text, type) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

export function today() {
  return new Date().toISOString().slice(0, 10);
}

export function plural(count, word) {
  return `${count} ${word}${count === 1 ? "" : "s"}`;
}

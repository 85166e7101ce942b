// A safe subset of Markdown, built as DOM nodes: every piece of text is set as text, never
// parsed as HTML, so "<img onerror=...>" or "<script>" in a message shows as typed.
// Blocks: paragraphs, fenced code blocks (with a copy button), headings, bullet and numbered lists.
// Inline: `code`, **bold**, *italic* and _italic_, [text](url) and bare URLs, http and https only.

const FENCE = /^ {0,3}(`{3,}|~{3,})[ \t]*([^\s`]*)/;
const HEADING = /^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$/;
const BULLET = /^ {0,3}[-*+][ \t]+(.*)$/;
const ORDERED = /^ {0,3}(\d{1,9})[.)][ \t]+(.*)$/;
const INLINE = new RegExp(
  [
    /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/.source, // 1-2 code span
    /\*\*(?=\S)([\s\S]*?\S)\*\*/.source, // 3 bold
    /__(?=\S)([\s\S]*?\S)__(?!\w)/.source, // 4 bold
    /\*(?=[^\s*])([\s\S]*?[^\s*])\*/.source, // 5 italic
    /(?<!\w)_(?=[^\s_])([\s\S]*?[^\s_])_(?!\w)/.source, // 6 italic
    /\[([^[\]\n]+)\]\(([^()\s]+)\)/.source, // 7-8 link
    /(https?:\/\/[^\s<>"'`]*[^\s<>"'`.,;:!?)\]])/.source, // 9 bare URL
  ].join("|"),
  "g",
);
const MAX_DEPTH = 4;

/** Render `text` as a DocumentFragment of safe elements. */
export function renderMarkdown(text) {
  const fragment = document.createDocumentFragment();
  for (const block of parseBlocks(text)) fragment.append(renderBlock(block));
  return fragment;
}

/** A URL fit for a link (http or https only), or null. */
export function safeHref(href) {
  try {
    const url = new URL(href);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

function parseBlocks(text) {
  const lines = text.replace(/\r\n?/g, "\n").split("\n");
  const blocks = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const fence = FENCE.exec(line);
    if (fence) {
      const close = new RegExp(`^ {0,3}${fence[1][0] === "`" ? "`" : "~"}{${fence[1].length},}[ \\t]*$`);
      const body = [];
      for (i++; i < lines.length && !close.test(lines[i]); i++) body.push(lines[i]);
      i++; // the closing fence (a stream may not have sent it yet)
      blocks.push({ type: "code", lang: fence[2], text: body.join("\n") });
    } else if (!line.trim()) {
      i++;
    } else if (HEADING.test(line)) {
      const [, marks, title] = HEADING.exec(line);
      blocks.push({ type: "heading", level: marks.length, text: title });
      i++;
    } else if (BULLET.test(line) || ORDERED.test(line)) {
      i = parseList(lines, i, blocks);
    } else {
      const body = [];
      while (i < lines.length && lines[i].trim() && !startsBlock(lines[i])) body.push(lines[i++]);
      blocks.push({ type: "paragraph", text: body.join("\n") });
    }
  }
  return blocks;
}

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || BULLET.test(line) || ORDERED.test(line);
}

// Consecutive items of one kind; an indented line continues the item above it.
function parseList(lines, i, blocks) {
  const ordered = !BULLET.test(lines[i]);
  const pattern = ordered ? ORDERED : BULLET;
  const list = { type: "list", ordered, start: ordered ? Number(ORDERED.exec(lines[i])[1]) : 1, items: [] };
  while (i < lines.length) {
    const line = lines[i];
    const item = pattern.exec(line);
    if (item) {
      list.items.push(ordered ? item[2] : item[1]);
    } else if (line.trim() && /^\s/.test(line) && !FENCE.test(line)) {
      list.items[list.items.length - 1] += "\n" + line.trim();
    } else if (!line.trim() && i + 1 < lines.length && pattern.test(lines[i + 1])) {
      // a blank line between two items keeps the list going
    } else {
      break;
    }
    i++;
  }
  blocks.push(list);
  return i;
}

function renderBlock(block) {
  if (block.type === "code") return codeBlock(block.lang, block.text);
  if (block.type === "heading") {
    const heading = document.createElement(`h${Math.min(6, block.level + 2)}`);
    heading.append(renderInline(block.text, 0));
    return heading;
  }
  if (block.type === "list") {
    const list = document.createElement(block.ordered ? "ol" : "ul");
    if (block.ordered && block.start !== 1) list.start = block.start;
    for (const text of block.items) {
      const item = document.createElement("li");
      item.append(renderInline(text, 0));
      list.append(item);
    }
    return list;
  }
  const paragraph = document.createElement("p");
  paragraph.append(renderInline(block.text, 0));
  return paragraph;
}

function codeBlock(lang, text) {
  const wrapper = document.createElement("div");
  wrapper.className = "code-block";
  const head = document.createElement("div");
  head.className = "code-head";
  const label = document.createElement("span");
  label.textContent = lang || "code";
  const copy = document.createElement("button");
  copy.type = "button";
  copy.className = "copy-code";
  copy.textContent = "Copy";
  copy.setAttribute("aria-label", "Copy code");
  head.append(label, copy);
  const pre = document.createElement("pre");
  const code = document.createElement("code");
  code.textContent = text;
  pre.append(code);
  wrapper.append(head, pre);
  return wrapper;
}

function renderInline(text, depth) {
  const fragment = document.createDocumentFragment();
  if (depth > MAX_DEPTH) {
    fragment.append(text);
    return fragment;
  }
  let last = 0;
  for (const match of text.matchAll(INLINE)) {
    if (match.index > last) fragment.append(text.slice(last, match.index));
    fragment.append(inlineNode(match, depth));
    last = match.index + match[0].length;
  }
  if (last < text.length) fragment.append(text.slice(last));
  return fragment;
}

function inlineNode(match, depth) {
  const wrap = (tag, inner) => {
    const element = document.createElement(tag);
    element.append(renderInline(inner, depth + 1));
    return element;
  };
  if (match[2] !== undefined) {
    const code = document.createElement("code");
    code.textContent = match[2];
    return code;
  }
  if (match[3] !== undefined || match[4] !== undefined) return wrap("strong", match[3] ?? match[4]);
  if (match[5] !== undefined || match[6] !== undefined) return wrap("em", match[5] ?? match[6]);
  if (match[7] !== undefined) {
    const href = safeHref(match[8]);
    return href ? link(href, match[7]) : document.createTextNode(match[0]);
  }
  const href = safeHref(match[9]);
  return href ? link(href, match[9]) : document.createTextNode(match[0]);
}

function link(href, text) {
  const anchor = document.createElement("a");
  anchor.href = href;
  anchor.textContent = text;
  anchor.target = "_blank";
  anchor.rel = "noopener noreferrer nofollow";
  return anchor;
}

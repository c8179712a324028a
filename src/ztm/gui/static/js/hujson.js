// HuJSON (JSON with // and /* */ comments and trailing commas), as the policy page needs it: a tokenizer for syntax
// highlighting, the highlighted view (DOM nodes built with textContent only: the text is never parsed as HTML), and
// a lenient reader for the one value the page needs itself (the "admins" list). The hub's parser is the judge of
// what is valid; nothing here refuses a text.

import { h } from "./ui.js";

const PUNCT = new Set(["{", "}", "[", "]", ",", ":"]);

// Tokens of `text`, in order, covering it exactly: {kind, text} with kind one of key, string, number, literal,
// comment, punct, space, other (whatever JSON would not accept: shown as it is).
export function tokens(text) {
  const out = [];
  let i = 0;
  const n = text.length;
  while (i < n) {
    const c = text[i];
    let j = i + 1;
    let kind = "other";
    if (c === " " || c === "\t" || c === "\n" || c === "\r") {
      while (j < n && " \t\n\r".includes(text[j])) j += 1;
      kind = "space";
    } else if (c === "/" && text[i + 1] === "/") {
      j = text.indexOf("\n", i);
      if (j < 0) j = n;
      kind = "comment";
    } else if (c === "/" && text[i + 1] === "*") {
      j = text.indexOf("*/", i + 2);
      j = j < 0 ? n : j + 2;
      kind = "comment";
    } else if (c === '"') {
      while (j < n && text[j] !== '"' && text[j] !== "\n") j += text[j] === "\\" ? 2 : 1;
      j = Math.min(n, j < n && text[j] === '"' ? j + 1 : j);
      kind = "string";
    } else if (PUNCT.has(c)) {
      kind = "punct";
    } else if (c === "-" || (c >= "0" && c <= "9")) {
      while (j < n && /[0-9eE+\-.]/.test(text[j])) j += 1;
      kind = "number";
    } else if (/[A-Za-z_]/.test(c)) {
      while (j < n && /[A-Za-z0-9_]/.test(text[j])) j += 1;
      kind = ["true", "false", "null"].includes(text.slice(i, j)) ? "literal" : "other";
    }
    out.push({ kind, text: text.slice(i, j) });
    i = j;
  }
  // A string followed (across spaces and comments) by ":" is an object key.
  for (let k = 0; k < out.length; k += 1) {
    if (out[k].kind !== "string") continue;
    let m = k + 1;
    while (m < out.length && (out[m].kind === "space" || out[m].kind === "comment")) m += 1;
    if (m < out.length && out[m].text === ":") out[k].kind = "key";
  }
  return out;
}

// The text as numbered lines of highlighted tokens, in a <pre>; `mark` is a line number to flag (an error's line).
export function highlighted(text, { mark = 0, testid } = {}) {
  const lines = [[]];
  for (const token of tokens(text)) {
    const parts = token.text.split("\n");
    parts.forEach((part, index) => {
      if (index > 0) lines.push([]);
      if (part) lines[lines.length - 1].push(token.kind === "space" || token.kind === "punct" ? part : h("span", { class: `hl-${token.kind}` }, part));
    });
  }
  if (lines.length > 1 && lines[lines.length - 1].length === 0) lines.pop();
  return h(
    "pre",
    { class: "code", "data-testid": testid },
    lines.map((parts, index) =>
      h("span", { class: index + 1 === mark ? "line marked" : "line", "data-line": String(index + 1) }, parts, "\n"),
    ),
  );
}

// The value of a HuJSON text, read leniently (comments and trailing commas dropped), or null if it is not JSON then.
export function readLenient(text) {
  const kept = tokens(text).filter((t) => t.kind !== "comment");
  const out = [];
  kept.forEach((token, index) => {
    if (token.text === ",") {
      let m = index + 1;
      while (m < kept.length && kept[m].kind === "space") m += 1;
      if (m < kept.length && (kept[m].text === "}" || kept[m].text === "]")) return;
    }
    out.push(token.text);
  });
  try {
    return JSON.parse(out.join(""));
  } catch {
    return null;
  }
}

// The line number a hub error names ("policy line 7, column 12: ..."), or 0.
export function errorLine(message) {
  const match = /\bline (\d+)/.exec(String(message || ""));
  return match ? Number(match[1]) : 0;
}

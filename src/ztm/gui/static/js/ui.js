// DOM helpers: elements are built with textContent only (no HTML from data), tables, badges, toasts, forms.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function badge(text, kind = "") {
  return h("span", { class: `badge ${kind}` }, text);
}

export function statusBadge(status) {
  const kind = { online: "ok", connecting: "warn", error: "bad", offline: "bad", running: "ok", stopped: "" }[status];
  return badge(status || "unknown", kind || "");
}

export function chips(values) {
  return (values || []).map((v) => h("span", { class: "chip" }, v));
}

// columns: [{label, cell: row => Node|string, class?}]
export function table(columns, rows, { empty = "Nothing here yet.", onRow, selected, testid } = {}) {
  if (!rows || rows.length === 0) return h("p", { class: "empty", "data-testid": testid }, empty);
  const head = h("tr", {}, columns.map((c) => h("th", { class: c.class }, c.label)));
  const body = rows.map((row) =>
    h(
      "tr",
      {
        class: [onRow ? "clickable" : "", selected && selected(row) ? "selected" : ""].join(" ").trim() || undefined,
        onclick: onRow ? (event) => { if (!event.target.closest("button, a, input")) onRow(row); } : undefined,
      },
      columns.map((c) => h("td", { class: c.class }, c.cell(row))),
    ),
  );
  return h("div", { class: "table-wrap" }, h("table", { "data-testid": testid }, h("thead", {}, head), h("tbody", {}, body)));
}

export function kv(pairs) {
  return h("dl", { class: "kv" }, pairs.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v ?? "–")]));
}

export function card(title, ...children) {
  return h("section", { class: "card" }, title ? h("h2", {}, title) : null, children);
}

export function pageHead(title, subtitle, ...actions) {
  return h(
    "div",
    { class: "page-head" },
    h("div", {}, h("h1", {}, title), subtitle ? h("p", { class: "muted small" }, subtitle) : null),
    h("span", { class: "spacer" }),
    actions,
  );
}

export function field(label, input, hint) {
  return h("label", { class: "field" }, h("span", {}, label), input, hint ? h("small", {}, hint) : null);
}

export function errorBanner(message) {
  return h("p", { class: "banner error", role: "alert" }, message);
}

export function toast(message, kind = "") {
  const box = document.getElementById("toasts");
  const el = h("div", { class: `toast ${kind}`, role: kind === "error" ? "alert" : "status" }, message);
  box.append(el);
  while (box.children.length > 3) box.firstElementChild.remove();
  setTimeout(() => el.remove(), kind === "error" ? 9000 : 4000);
}

// Run an action from a button: disabled while it runs, errors shown as a toast; returns the result or undefined.
export async function act(button, work, done) {
  if (button) button.disabled = true;
  try {
    const result = await work();
    if (done) toast(typeof done === "function" ? done(result) : done);
    return result;
  } catch (exc) {
    toast(exc.message, "error");
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}

export function words(text) {
  return String(text || "").split(/[\s,]+/).filter(Boolean);
}

export function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${i === 0 ? v : v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

// Connections by path (`paths` of a tunnel or of the proxy's entrance/exit): "relay 3, direct 2", as the CLI shows it.
export function paths(counts) {
  if (!counts || typeof counts !== "object") return "–";
  return Object.entries(counts).filter(([, n]) => Number(n) > 0).map(([p, n]) => `${p} ${n}`).join(", ") || "none";
}

export function ago(iso) {
  if (!iso) return "–";
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return String(iso);
  const s = Math.round((Date.now() - t) / 1000);
  if (Math.abs(s) < 60) return s >= 0 ? `${s}s ago` : `in ${-s}s`;
  const m = Math.round(s / 60);
  if (Math.abs(m) < 90) return m >= 0 ? `${m} min ago` : `in ${-m} min`;
  const hr = Math.round(m / 60);
  if (Math.abs(hr) < 48) return hr >= 0 ? `${hr} h ago` : `in ${hr * -1} h`;
  return new Date(t).toISOString().slice(0, 16).replace("T", " ");
}

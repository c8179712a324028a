// Audit: the hub's append-only audit log (joins, enrolments, invitations, evictions, policy versions, publications,
// hub starts and stops, refused admin attempts), oldest first, filtered by user and time. Root and the policy's
// admins may read it; the hub refuses others, and the page says so.

import { get, meshPath } from "../api.js";
import { act, card, clear, errorBanner, field, h, pageHead, table } from "../ui.js";

const SPANS = [["3600", "Last hour"], ["86400", "Last 24 hours"], ["604800", "Last 7 days"], ["", "All"]];

function when(at) {
  const t = typeof at === "number" ? at * 1000 : Date.parse(at);
  return Number.isNaN(t) ? String(at ?? "–") : new Date(t).toISOString().replace("T", " ").slice(0, 19);
}

// `note: first · sha256: ad99f42633ea… · tests: 1`: an entry's detail on one wrapping line (hashes shortened; the
// whole entry is in `ztm get audit -o json`).
function detailText(detail) {
  if (detail === null || detail === undefined || detail === "") return "";
  if (typeof detail !== "object" || Array.isArray(detail)) return JSON.stringify(detail);
  const show = (v) => {
    const text = typeof v === "string" ? v : JSON.stringify(v);
    return /^[0-9a-f]{40,}$/.test(text) ? `${text.slice(0, 12)}…` : text;
  };
  return Object.entries(detail).map(([k, v]) => `${k}: ${show(v)}`).join(" · ");
}

export async function render(ctx) {
  const user = h("input", { name: "user", placeholder: "any user", autocomplete: "off", "aria-label": "user", "data-testid": "audit-user" });
  const span = h("select", { name: "since", "aria-label": "since", "data-testid": "audit-since" }, SPANS.map(([v, l]) => h("option", { value: v }, l)));
  span.value = "86400";
  const from = h("input", { type: "datetime-local", name: "from", "aria-label": "from", "data-testid": "audit-from" });
  const list = h("div");
  const count = h("span", { class: "muted small" });

  function query() {
    const params = new URLSearchParams();
    if (user.value.trim()) params.set("user", user.value.trim());
    let since = null;
    if (from.value) since = Math.floor(new Date(from.value).getTime() / 1000);
    else if (span.value) since = Math.floor(Date.now() / 1000) - Number(span.value);
    if (since !== null && since > 0) params.set("since", String(since));
    params.set("limit", "1000");
    return params.toString();
  }

  async function refresh() {
    let entries;
    try {
      entries = await get(`${meshPath(ctx.mesh, "audit")}?${query()}`);
    } catch (exc) {
      if (ctx.live()) clear(list, errorBanner(exc.message));
      return;
    }
    if (!ctx.live()) return;
    count.textContent = `${entries.length} entr${entries.length === 1 ? "y" : "ies"}${entries.length >= 1000 ? " (the first 1000: narrow the filter)" : ""}`;
    clear(
      list,
      card(
        null,
        table(
          [
            { label: "#", class: "num", cell: (e) => String(e.seq) },
            { label: "Time (UTC)", class: "nowrap", cell: (e) => h("span", { class: "mono small" }, when(e.at)) },
            { label: "Actor", cell: (e) => e.actor || "–" },
            { label: "From", cell: (e) => e.actor_ep || "–" },
            { label: "Action", class: "nowrap", cell: (e) => h("span", { class: e.action === "denied" ? "chip bad-text" : "chip" }, e.action) },
            { label: "Target", cell: (e) => e.target || "" },
            { label: "Detail", class: "detail", cell: (e) => h("span", { class: "small", title: JSON.stringify(e.detail) }, detailText(e.detail)) },
          ],
          entries,
          { testid: "audit", empty: "No audit entry matches." },
        ),
      ),
    );
  }

  const apply = (event) => { event.preventDefault(); return act(event.submitter, refresh); };
  ctx.root.append(
    pageHead("Audit", `The hub's audit log of mesh ${ctx.mesh}, oldest first. It cannot be edited; root and the policy's admins may read it.`, count),
    card(null,
      h("form", { class: "row", "data-testid": "audit-filter", onsubmit: apply },
        field("User", user), field("Since", span), field("Or from (local time)", from),
        h("div", { class: "field" }, h("button", { type: "submit" }, "Filter")))),
    list,
  );
  span.addEventListener("change", () => { from.value = ""; refresh(); });
  await refresh();
  ctx.every(5000, refresh);
}

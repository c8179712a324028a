// Logs: this agent's, an endpoint's (owner or root), the hub's (root), with a filter and live follow.

import { get, meshPath, seg } from "../api.js";
import { clear, errorBanner, field, h, pageHead } from "../ui.js";

export async function render(ctx) {
  const source = h("select", { "aria-label": "log source", "data-testid": "log-source" });
  const sources = [["agent", "This agent"]];
  if (ctx.mesh) {
    sources.push(["hub", `Hub of ${ctx.mesh} (root only)`]);
    try {
      const eps = await get(meshPath(ctx.mesh, "endpoints"));
      for (const ep of eps.filter((e) => !e.is_local)) sources.push([`ep:${ep.id}`, `Endpoint ${ep.name}`]);
    } catch { /* endpoints unavailable: the agent log still works */ }
  }
  for (const [value, label] of sources) source.append(h("option", { value }, label));
  const lines = h("select", { "aria-label": "lines" }, [100, 500, 2000].map((n) => h("option", { value: n }, `${n} lines`)));
  const filter = h("input", { type: "search", placeholder: "filter", autocomplete: "off", "aria-label": "filter" });
  const follow = h("input", { type: "checkbox", checked: true });
  const view = h("pre", { class: "log", "data-testid": "log" }, "…");
  const problem = h("div");
  let text = [];

  function path() {
    const n = lines.value;
    if (source.value === "agent") return `/api/log?lines=${n}`;
    if (source.value === "hub") return `${meshPath(ctx.mesh, "hub", "log")}?lines=${n}`;
    return `${meshPath(ctx.mesh, "endpoints", seg(source.value.slice(3)), "log")}?lines=${n}`;
  }

  function draw() {
    const wanted = filter.value.trim().toLowerCase();
    const shown = wanted ? text.filter((l) => l.toLowerCase().includes(wanted)) : text;
    const atBottom = view.scrollTop + view.clientHeight >= view.scrollHeight - 4;
    clear(view, shown.length ? shown.map((l) => h("span", { class: (l.match(/ (ERROR|WARNING) /) || [])[1] || "" }, l, "\n")) : "(no lines)");
    if (atBottom || follow.checked) view.scrollTop = view.scrollHeight;
  }

  async function refresh() {
    try {
      const result = await get(path());
      if (!ctx.live()) return;
      text = result.lines;
      clear(problem);
      draw();
    } catch (exc) {
      if (ctx.live()) clear(problem, errorBanner(exc.message));
    }
  }

  source.addEventListener("change", refresh);
  lines.addEventListener("change", refresh);
  filter.addEventListener("input", draw);
  ctx.root.append(
    pageHead("Logs", "Recent log lines. Keys, tokens and sign-in codes are never logged."),
    h("section", { class: "card" },
      h("div", { class: "row" },
        field("Source", source), field("Show", lines), field("Filter", filter),
        h("label", { class: "field" }, h("span", {}, "Follow"), h("span", {}, follow, " refresh every 2 s"))),
      problem,
      view),
  );
  await refresh();
  ctx.every(2000, () => { if (follow.checked) refresh(); });
}

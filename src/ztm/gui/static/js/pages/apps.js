// Apps of the current mesh: what runs, start and stop; app packages published in the mesh.

import { get, meshPath, post, seg } from "../api.js";
import { act, card, clear, errorBanner, h, pageHead, statusBadge, table } from "../ui.js";

const PAGE_OF = { tunnel: "#/tunnel", proxy: "#/proxy", terminal: "#/terminal", files: "#/files" };

export async function render(ctx) {
  const list = h("div");
  const packages = h("div");
  ctx.root.append(pageHead("Apps", `Apps on this endpoint in mesh ${ctx.mesh}. A started app stays started across restarts.`), list, packages);

  async function toggle(button, app) {
    const verb = app.running ? "stop" : "start";
    const done = await act(button, () => post(meshPath(ctx.mesh, "apps", seg(app.name), verb), {}), `${app.name}: ${verb === "stop" ? "stopped" : "started"}`);
    if (done !== undefined) await refresh();
  }

  async function refresh() {
    let apps;
    try {
      apps = await get(meshPath(ctx.mesh, "apps"));
    } catch (exc) {
      if (ctx.live()) clear(list, errorBanner(exc.message));
      return;
    }
    if (!ctx.live()) return;
    clear(
      list,
      card(
        null,
        table(
          [
            { label: "App", cell: (a) => (PAGE_OF[a.name] ? h("a", { href: PAGE_OF[a.name] }, h("strong", {}, a.name)) : h("strong", {}, a.name)) },
            { label: "Provider", cell: (a) => a.provider || "–" },
            { label: "Version", cell: (a) => a.version || "–" },
            { label: "State", cell: (a) => [statusBadge(a.state || (a.running ? "running" : "stopped")), a.error ? h("div", { class: "small bad-text" }, a.error) : null] },
            { label: "Description", cell: (a) => h("span", { class: "muted" }, a.description || "") },
            {
              label: "",
              cell: (a) =>
                h("button", {
                  type: "button",
                  class: a.running ? "small danger" : "small primary",
                  "data-testid": `app-${a.running ? "stop" : "start"}-${a.name}`,
                  onclick: (e) => toggle(e.currentTarget, a),
                }, a.running ? "Stop" : "Start"),
            },
          ],
          apps,
          { testid: "apps", empty: "No app in this mesh." },
        ),
      ),
    );
    try {
      const offered = await get(meshPath(ctx.mesh, "app-packages"));
      if (!ctx.live()) return;
      clear(
        packages,
        card(
          "Published in the mesh",
          table(
            [
              { label: "App", cell: (p) => h("strong", {}, p.name) },
              { label: "Version", cell: (p) => p.version || "–" },
              { label: "SHA-256", cell: (p) => h("span", { class: "mono small" }, String(p.sha256 || "").slice(0, 16)) },
              { label: "Sources", cell: (p) => (p.sources || []).map((s) => (typeof s === "string" ? s : s.name || s.ep)).join(", ") },
              {
                label: "",
                cell: (p) => h("button", {
                  type: "button", class: "small",
                  onclick: async (e) => {
                    const done = await act(e.currentTarget, () => post(meshPath(ctx.mesh, "apps", seg(p.name), "download"), { sha256: p.sha256 }), `${p.name} installed`);
                    if (done !== undefined) await refresh();
                  },
                }, "Install"),
              },
            ],
            offered,
            { empty: "No app package is published in this mesh." },
          ),
        ),
      );
    } catch {
      clear(packages);
    }
  }

  await refresh();
  ctx.every(5000, refresh);
}

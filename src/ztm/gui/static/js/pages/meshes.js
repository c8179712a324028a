// Meshes: the ones this agent joined (status, errors, hubs), join with a permit file, leave.

import { del, get, meshPath, post, seg } from "../api.js";
import { act, ago, card, chips, clear, errorBanner, field, h, kv, pageHead, statusBadge, table, toast, words } from "../ui.js";

export async function render(ctx) {
  const list = h("div");
  const hubs = h("div");
  ctx.root.append(
    pageHead("Meshes", "Meshes this agent has joined, with their hub connections."),
    h("div", { class: "grid2" }, h("div", { class: "stack" }, list, hubs), joinCard(ctx)),
  );

  async function refresh() {
    const meshes = await ctx.refreshMeshes();
    if (!ctx.live()) return;
    clear(
      list,
      card(
        "Joined meshes",
        table(
          [
            { label: "Mesh", cell: (m) => h("strong", {}, m.name) },
            { label: "Endpoint", cell: (m) => m.ep_name },
            { label: "User", cell: (m) => m.user },
            { label: "Status", cell: (m) => [statusBadge(m.status), m.error ? h("div", { class: "small bad-text" }, m.error) : null] },
            { label: "Certificate", cell: (m) => h("span", { title: m.cert_expires || "" }, m.cert_expires ? `expires ${ago(m.cert_expires)}` : "–") },
            {
              label: "",
              class: "actions",
              cell: (m) =>
                h("button", {
                  class: "small danger",
                  type: "button",
                  "data-testid": `leave-${m.name}`,
                  onclick: (e) => leave(e.currentTarget, m.name),
                }, "Leave"),
            },
          ],
          meshes,
          { empty: "No mesh joined yet: join one with a permit file.", testid: "meshes", onRow: (m) => ctx.setMesh(m.name), selected: (m) => m.name === ctx.mesh },
        ),
        meshes.filter((m) => m.error).map((m) => errorBanner(`${m.name}: ${m.error}`)),
      ),
      meshes.filter((m) => m.name === ctx.mesh).map(thisEndpoint),
    );
    if (!ctx.mesh) { clear(hubs); return; }
    try {
      const rows = await get(meshPath(ctx.mesh, "hubs"));
      if (!ctx.live()) return;
      clear(
        hubs,
        card(
          `Hubs of ${ctx.mesh}`,
          table(
            [
              { label: "Hub", cell: (x) => h("span", { class: "mono", title: (x.addresses || []).join(", ") }, x.id || x.address) },
              { label: "Zone", cell: (x) => x.zone || "–" },
              { label: "Address", cell: (x) => h("span", { class: "mono" }, x.address) },
              { label: "Used", cell: (x) => (x.connected ? "✓" : "") },
              { label: "Status", cell: (x) => statusBadge(x.status || (x.connected ? "online" : "offline")) },
              { label: "Endpoints", class: "num", cell: (x) => (x.endpoints == null ? "–" : String(x.endpoints)) },
              { label: "RTT", class: "num", cell: (x) => (x.rtt_ms != null ? `${x.rtt_ms.toFixed(1)} ms` : x.connect_ms != null ? `~${x.connect_ms.toFixed(1)} ms` : "–") },
              { label: "Since", cell: (x) => ago(x.since) },
              { label: "Version", cell: (x) => x.version || "–" },
            ],
            rows,
            { empty: "No hub." },
          ),
          rows.filter((x) => x.error).map((x) => errorBanner(`${x.address}: ${x.error}`)),
        ),
      );
    } catch (exc) {
      clear(hubs, errorBanner(exc.message));
    }
  }

  async function leave(button, name) {
    if (!confirm(`Leave mesh ${name}? This agent disconnects from its hubs and forgets the mesh.`)) return;
    await act(button, async () => {
      await del(`/api/meshes/${seg(name)}`);
      await refresh();
    }, `Left mesh ${name}`);
  }

  ctx.refreshJoined = refresh;
  await refresh();
  ctx.every(5000, () => refresh().catch(() => {}));
}

function joinCard(ctx) {
  const mesh = h("input", { name: "mesh", required: true, placeholder: "office", pattern: "[A-Za-z0-9._\\-]{1,63}", autocomplete: "off" });
  const as = h("input", { name: "as", required: true, placeholder: "laptop", autocomplete: "off" });
  const file = h("input", { name: "permit", type: "file", accept: ".json,application/json", required: true });
  const labels = h("input", { name: "labels", placeholder: "site=paris gpu", autocomplete: "off" });
  const problem = h("div");
  const submit = h("button", { class: "primary", type: "submit" }, "Join");
  const form = h(
    "form",
    {
      "data-testid": "join-form",
      onsubmit: async (event) => {
        event.preventDefault();
        clear(problem);
        let permit;
        try {
          const text = await file.files[0].text();
          permit = JSON.parse(text);
        } catch (exc) {
          clear(problem, errorBanner(`The permit file is not JSON (${exc.message}): choose the file written by 'ztm start hub --permit' or 'ztm invite'.`));
          return;
        }
        submit.disabled = true;
        submit.textContent = "Joining…";
        try {
          const joined = await post(`/api/meshes/${seg(mesh.value.trim())}`, { as: as.value.trim(), permit, labels: words(labels.value) });
          toast(`Joined ${joined.name} as ${joined.ep_name}`);
          form.reset();
          ctx.setMesh(joined.name);
        } catch (exc) {
          clear(problem, errorBanner(exc.message));
        } finally {
          submit.disabled = false;
          submit.textContent = "Join";
        }
      },
    },
    problem,
    field("Mesh name (local)", mesh, "A name of your choice for this mesh on this agent."),
    field("Endpoint name", as, "The name other endpoints see."),
    field("Permit file", file, "From 'ztm start hub --permit FILE' (root) or 'ztm invite' (other users)."),
    field("Labels", labels, "Optional, separated by spaces."),
    h("div", { class: "actions" }, submit),
  );
  return card("Join a mesh", form);
}

function thisEndpoint(known) {
  return card(
    `This endpoint in ${known.name}`,
    kv([
      ["endpoint id", h("span", { class: "mono" }, known.ep_id)],
      ["mesh id", h("span", { class: "mono" }, known.mesh_id)],
      ["hubs", chips(known.hubs)],
      ["joined", ago(known.joined_at)],
      ["connected", ago(known.connected_since)],
    ]),
  );
}

// Endpoints of the current mesh: status, mesh addresses, labels, ping; a detail panel with every field, labels,
// subnet routes (advertise and withdraw for the owner and root, approve for root) and the log.

import { get, meshPath, post, seg } from "../api.js";
import { act, ago, badge, card, chips, clear, errorBanner, field, h, kv, pageHead, statusBadge, table, toast, words } from "../ui.js";

export async function render(ctx) {
  const list = h("div");
  const detail = h("div");
  const rtts = new Map();
  let selected = location.hash.split("/")[2] ? decodeURIComponent(location.hash.split("/")[2]) : null;
  let rows = [];
  const me = (ctx.meshes.find((m) => m.name === ctx.mesh) || {}).user || "";
  ctx.root.append(
    pageHead("Endpoints", `Every endpoint of mesh ${ctx.mesh}, live from its hub.`,
      h("button", { type: "button", onclick: (e) => act(e.currentTarget, refresh) }, "Refresh")),
    h("div", { class: "split" }, list, detail),
  );

  async function ping(button, ep) {
    const result = await act(button, () => post(meshPath(ctx.mesh, "endpoints", seg(ep.id), "ping"), { count: 3 }));
    if (!result) return;
    const best = Math.min(...result.rtt_ms);
    rtts.set(ep.id, best);
    toast(`${ep.name}: ${result.rtt_ms.map((r) => r.toFixed(1)).join(" / ")} ms`);
    draw();
  }

  // How this agent's streams reach the endpoint now (docs/nat-traversal.md): punched, lan, direct, or the hub relay.
  function pathText(e) {
    if (!e.path) return "–";
    if (e.path === "relay") return e.path_via ? `relay via ${e.path_via}` : "relay";
    return typeof e.path_rtt_ms === "number" ? `${e.path} ${e.path_rtt_ms.toFixed(1)} ms` : e.path;
  }

  function draw() {
    clear(
      list,
      card(
        null,
        table(
          [
            { label: "Name", cell: (e) => [h("strong", {}, e.name), e.is_local ? h("span", { class: "muted small" }, " (this)") : null] },
            { label: "User", cell: (e) => e.user },
            { label: "Status", cell: (e) => statusBadge(e.online ? "online" : "offline") },
            { label: "Address", cell: (e) => h("span", { class: "mono small" }, e.ip ? `${e.ip}${e.port ? ":" + e.port : ""}` : "–") },
            { label: "Mesh IP", cell: (e) => h("span", { class: "mono small", "data-testid": `mesh-ip-${e.name}` }, e.mesh_ip || "–") },
            { label: "Labels", cell: (e) => chips(e.labels) },
            { label: "Path", cell: (e) => h("span", { class: "small", "data-testid": `path-${e.name}` }, pathText(e)) },
            { label: "RTT", class: "num", cell: (e) => (rtts.has(e.id) ? `${rtts.get(e.id).toFixed(1)} ms` : "") },
            {
              label: "",
              cell: (e) => h("button", { class: "small", type: "button", disabled: !e.online, "data-testid": `ping-${e.name}`, onclick: (ev) => ping(ev.currentTarget, e) }, "Ping"),
            },
          ],
          rows,
          { testid: "endpoints", empty: "No endpoint.", onRow: (e) => { selected = e.id; history.replaceState(null, "", `#/endpoints/${seg(e.id)}`); draw(); showDetail(); }, selected: (e) => e.id === selected },
        ),
      ),
    );
  }

  async function showDetail() {
    const ep = rows.find((e) => e.id === selected || e.name === selected);
    if (!ep) { clear(detail, card("Details", h("p", { class: "muted" }, "Select an endpoint to see every field, its labels and its log."))); return; }
    const add = h("input", { placeholder: "site=paris", autocomplete: "off", "aria-label": "labels to add" });
    const logBox = h("div");
    const labelForm = h(
      "form",
      {
        class: "row",
        onsubmit: async (event) => {
          event.preventDefault();
          const button = event.submitter;
          const updated = await act(button, () => post(meshPath(ctx.mesh, "endpoints", seg(ep.id), "labels"), { add: words(add.value), delete: [] }), "Labels saved");
          if (updated) await refresh();
        },
      },
      field("Add labels", add),
      h("div", { class: "field" }, h("button", { type: "submit" }, "Add")),
    );
    const removable = (ep.labels || []).map((l) =>
      h("span", { class: "chip" }, l, h("button", {
        type: "button", title: `delete ${l}`,
        onclick: async (event) => {
          const updated = await act(event.currentTarget, () => post(meshPath(ctx.mesh, "endpoints", seg(ep.id), "labels"), { add: [], delete: [l] }), `Deleted ${l}`);
          if (updated) await refresh();
        },
      }, "✕")));
    const routesPath = meshPath(ctx.mesh, "endpoints", seg(ep.id), "routes");
    const changeRoutes = async (button, body, done) => {
      const updated = await act(button, () => post(routesPath, body), done);
      if (updated) await refresh();
    };
    const approve = async (button, cidr, approved) => {
      const updated = await act(button, () => post(meshPath(ctx.mesh, "routes", "approve"), { ep: ep.id, cidrs: [cidr], approved }),
        `${approved ? "Approved" : "Unapproved"} ${cidr}`);
      if (updated) await refresh();
    };
    const mayChange = me === "root" || me === ep.user;
    const routeItem = (cidr, approved) => h("li", { "data-testid": `route-${ep.name}-${cidr}` },
      h("span", { class: "mono" }, cidr), " ", badge(approved ? "approved" : "pending", approved ? "ok" : "warn"),
      me === "root" ? [" ", h("button", { class: "small", type: "button", "data-testid": `${approved ? "unapprove" : "approve"}-${cidr}`,
        onclick: (ev) => approve(ev.currentTarget, cidr, !approved) }, approved ? "Unapprove" : "Approve")] : null,
      mayChange ? [" ", h("button", { class: "small", type: "button", title: `withdraw ${cidr}`,
        onclick: (ev) => changeRoutes(ev.currentTarget, { withdraw: [cidr] }, `Withdrew ${cidr}`) }, "Withdraw")] : null);
    const routes = [...(ep.routes || []).map((c) => routeItem(c, true)), ...(ep.routes_pending || []).map((c) => routeItem(c, false))];
    const cidrInput = h("input", { placeholder: "10.20.0.0/16", autocomplete: "off", "aria-label": "networks to advertise" });
    const routeForm = mayChange ? h(
      "form",
      {
        class: "row",
        onsubmit: async (event) => {
          event.preventDefault();
          await changeRoutes(event.submitter, { advertise: words(cidrInput.value) }, "Advertised; root approves it");
        },
      },
      field("Advertise networks", cidrInput),
      h("div", { class: "field" }, h("button", { type: "submit" }, "Advertise")),
    ) : null;
    clear(
      detail,
      card(
        ep.name,
        kv([
          ["id", h("span", { class: "mono" }, ep.id)],
          ["user", ep.user],
          ["status", statusBadge(ep.online ? "online" : "offline")],
          ["version", ep.version],
          ["hostname", ep.hostname],
          ["address", ep.ip ? `${ep.ip}:${ep.port}` : "–"],
          ["mesh IPv4", h("span", { class: "mono", "data-testid": "mesh-ip" }, ep.mesh_ip || "–")],
          ["mesh IPv6", h("span", { class: "mono", "data-testid": "mesh-ip6" }, ep.mesh_ip6 || "–")],
          ["path", pathText(ep)],
          ["online since", ago(ep.online_since)],
          ["last seen", ago(ep.last_seen)],
          ["first seen", ago(ep.first_seen)],
          ["labels", removable.length ? removable : "–"],
        ]),
        h("h3", {}, "Labels"),
        labelForm,
        h("h3", {}, "Subnet routes"),
        routes.length ? h("ul", { class: "plain", "data-testid": "routes" }, routes) : h("p", { class: "muted small" }, "No routes advertised."),
        routeForm,
        h("p", { class: "muted small" }, "Networks this endpoint routes to for the others (network mode, --accept-routes). Its owner and root advertise and withdraw them; only root approves."),
        h("h3", {}, "Log"),
        h("button", {
          type: "button", class: "small",
          onclick: async (event) => {
            const result = await act(event.currentTarget, () => get(`${meshPath(ctx.mesh, "endpoints", seg(ep.id), "log")}?lines=200`));
            if (result) clear(logBox, h("pre", { class: "log" }, result.lines.join("\n") || "(empty)"));
          },
        }, "Show its log"),
        h("p", { class: "muted small" }, "Only the endpoint's owner and root may read its log or change its labels."),
        logBox,
      ),
    );
  }

  async function refresh() {
    try {
      rows = await get(meshPath(ctx.mesh, "endpoints"));
    } catch (exc) {
      if (ctx.live()) clear(list, errorBanner(exc.message));
      return;
    }
    if (!ctx.live()) return;
    rows.sort((a, b) => (b.is_local - a.is_local) || a.name.localeCompare(b.name));
    draw();
    if (!detail.firstChild || !detail.contains(document.activeElement)) await showDetail();
  }

  await refresh();
  ctx.every(5000, refresh);
}

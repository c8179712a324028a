// Tunnel app: this endpoint's entrances (inbound) and exits (outbound), open and close them; every tunnel of the mesh.

import { del, get, meshPath, post } from "../api.js";
import { act, bytes, card, chips, clear, errorBanner, field, h, pageHead, paths, statusBadge, table, toast, words } from "../ui.js";

export async function render(ctx) {
  const base = meshPath(ctx.mesh, "apps", "tunnel");
  const local = h("div");
  const mesh = h("div");
  ctx.root.append(
    pageHead("Tunnel", "Forward TCP and UDP ports across the mesh: an inbound listens here, an outbound connects to targets from here."),
    h("div", { class: "grid2" }, openInbound(), openOutbound()),
    h("div", { style: "height:16px" }),
    local,
    mesh,
  );

  function closeButton(kind, t) {
    const [proto, name] = t.tunnel.split("/");
    return h("button", {
      type: "button", class: "small danger", "data-testid": `close-${kind}-${t.tunnel}`,
      onclick: async (e) => {
        const done = await act(e.currentTarget, () => del(`${base}/${kind}/${proto}/${encodeURIComponent(name)}`), `Closed ${kind} ${t.tunnel}`);
        if (done !== undefined) await refresh();
      },
    }, "Close");
  }

  const counters = [
    { label: "Streams", class: "num", cell: (t) => `${t.active} / ${t.streams}` },
    { label: "Refused", class: "num", cell: (t) => String(t.refused) },
    { label: "Sent", class: "num", cell: (t) => bytes(t.bytes_sent) },
    { label: "Received", class: "num", cell: (t) => bytes(t.bytes_received) },
    { label: "Paths", cell: (t) => paths(t.paths) },
    // relayed streams are sealed end to end (the hub sees ciphertext); direct channels are TLS between the endpoints
    { label: "Encryption", cell: (t) => `end-to-end ${t.e2e ?? 0} · direct TLS ${t.direct ?? 0}` },
  ];

  async function refresh() {
    let mine;
    try {
      mine = await get(base);
    } catch (exc) {
      if (ctx.live()) clear(local, errorBanner(exc.message));
      return;
    }
    if (!ctx.live()) return;
    clear(
      local,
      card(
        "Inbound on this endpoint",
        table(
          [
            { label: "Tunnel", cell: (t) => h("strong", { class: "mono" }, t.tunnel) },
            { label: "Listen", cell: (t) => chips(t.listen) },
            { label: "Exits", cell: (t) => (t.exits.length ? chips(t.exits.map((id) => (t.names && t.names[id]) || id))
              : h("span", { class: "muted" }, ["your user", "root", ...(t.exit_users || [])].join(", "))) },
            { label: "Uses now", cell: (t) => (t.exit_endpoints ? chips(t.exit_endpoints.map((x) => `${x.name} (${x.user})`)) : "?") },
            { label: "State", cell: (t) => statusBadge(t.listening ? "online" : "error") },
            ...counters,
            { label: "", cell: (t) => closeButton("inbound", t) },
          ],
          mine.inbound,
          { testid: "inbound", empty: "No inbound tunnel here." },
        ),
      ),
      card(
        "Outbound from this endpoint",
        table(
          [
            { label: "Tunnel", cell: (t) => h("strong", { class: "mono" }, t.tunnel) },
            { label: "Targets", cell: (t) => chips(t.targets) },
            { label: "Entrances", cell: (t) => (t.entrances.length ? chips(t.entrances.map((id) => (t.names && t.names[id]) || id)) : h("span", { class: "muted" }, "any")) },
            { label: "Users", cell: (t) => (t.users.length ? chips(t.users) : h("span", { class: "muted" }, "any")) },
            ...counters,
            { label: "", cell: (t) => closeButton("outbound", t) },
          ],
          mine.outbound,
          { testid: "outbound", empty: "No outbound tunnel here." },
        ),
      ),
    );
    try {
      const all = await get(`${base}/tunnels`);
      if (!ctx.live()) return;
      const peers = (list) => list.map((p) => h("span", { class: `chip ${p.online ? "" : "muted"}`, title: p.online ? "online" : "offline" }, p.name || p.ep));
      clear(
        mesh,
        card(
          "Every tunnel in the mesh",
          table(
            [
              { label: "Tunnel", cell: (t) => h("strong", { class: "mono" }, t.tunnel) },
              { label: "Inbound at", cell: (t) => peers(t.inbound) },
              { label: "Outbound at", cell: (t) => peers(t.outbound) },
            ],
            all,
            { testid: "mesh-tunnels", empty: "No tunnel in this mesh." },
          ),
        ),
      );
    } catch (exc) {
      if (ctx.live()) clear(mesh, errorBanner(exc.message));
    }
  }

  function openInbound() {
    const tunnel = h("input", { name: "tunnel", required: true, placeholder: "tcp/db", autocomplete: "off" });
    const listen = h("input", { name: "listen", required: true, placeholder: "15432 or 127.0.0.1:15432", autocomplete: "off" });
    const exits = h("input", { name: "exits", placeholder: "ep2 ep3 (optional)", autocomplete: "off" });
    return card(
      "Open inbound",
      h("form", {
        "data-testid": "open-inbound",
        onsubmit: async (event) => {
          event.preventDefault();
          const body = { tunnel: tunnel.value.trim(), listen: words(listen.value) };
          if (words(exits.value).length) body.exits = words(exits.value);
          const done = await act(event.submitter, () => post(`${base}/inbound`, body));
          if (done) { event.target.reset(); toast(`Inbound ${done.tunnel} listens on ${done.listen.join(", ")}`); await refresh(); }
        },
      },
      field("Tunnel", tunnel, "tcp/NAME or udp/NAME"),
      field("Listen on", listen, "[IP:]PORT, several separated by spaces; IP defaults to 127.0.0.1"),
      field("Exits", exits, "Pin to these endpoints, in failover order"),
      h("div", { class: "actions" }, h("button", { class: "primary", type: "submit" }, "Open inbound"))),
    );
  }

  function openOutbound() {
    const tunnel = h("input", { name: "tunnel", required: true, placeholder: "tcp/db", autocomplete: "off" });
    const targets = h("input", { name: "targets", required: true, placeholder: "10.0.0.5:5432", autocomplete: "off" });
    const entrances = h("input", { name: "entrances", placeholder: "ep1 (optional)", autocomplete: "off" });
    const users = h("input", { name: "users", placeholder: "alice (optional)", autocomplete: "off" });
    return card(
      "Open outbound",
      h("form", {
        "data-testid": "open-outbound",
        onsubmit: async (event) => {
          event.preventDefault();
          const body = { tunnel: tunnel.value.trim(), targets: words(targets.value) };
          if (words(entrances.value).length) body.entrances = words(entrances.value);
          if (words(users.value).length) body.users = words(users.value);
          const done = await act(event.submitter, () => post(`${base}/outbound`, body));
          if (done) { event.target.reset(); toast(`Outbound ${done.tunnel} to ${done.targets.join(", ")}`); await refresh(); }
        },
      },
      field("Tunnel", tunnel, "tcp/NAME or udp/NAME"),
      field("Targets", targets, "HOST:PORT, several separated by spaces (round-robin)"),
      h("div", { class: "row" }, field("Entrances", entrances), field("Users", users)),
      h("div", { class: "actions" }, h("button", { class: "primary", type: "submit" }, "Open outbound"))),
    );
  }

  await refresh();
  ctx.every(3000, refresh);
}

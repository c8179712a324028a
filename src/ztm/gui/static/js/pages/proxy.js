// Proxy app: this endpoint's listen address (entrance), the targets it serves as an exit, its rules; the mesh's exits.

import { del, get, meshPath, post } from "../api.js";
import { act, badge, card, chips, clear, errorBanner, field, h, kv, pageHead, statusBadge, table, words } from "../ui.js";

export async function render(ctx) {
  const base = meshPath(ctx.mesh, "apps", "proxy");
  const top = h("div");
  const rulesBox = h("div");
  const exitsBox = h("div");
  ctx.root.append(
    pageHead("Proxy", "A SOCKS5 and HTTP proxy here that leaves the mesh through the exits that serve the target."),
    top,
    h("div", { class: "grid2" }, rulesBox, exitsBox),
  );

  const configure = (button, body, done) =>
    act(button, async () => { await post(`${base}/config`, body); await refresh(); }, done);

  function entranceCard(config) {
    const listen = h("input", { name: "listen", placeholder: "127.0.0.1:1080", autocomplete: "off", value: config.listen || "" });
    return card(
      "Entrance on this endpoint",
      kv([
        ["listen", config.listen ? h("span", { class: "mono" }, config.listen) : h("span", { class: "muted" }, "not listening")],
        ["state", statusBadge(config.listening ? "online" : "stopped")],
      ]),
      h("form", {
        class: "row", "data-testid": "proxy-listen", style: "margin-top:12px",
        onsubmit: (e) => { e.preventDefault(); configure(e.submitter, { set_listen: listen.value.trim() }, "Listen address saved"); },
      },
      field("Listen on", listen, "[IP:]PORT; SOCKS5 and HTTP CONNECT on the same port"),
      h("div", { class: "field" }, h("button", { class: "primary", type: "submit" }, "Listen"))),
      config.listen
        ? h("div", { class: "actions" }, h("button", { type: "button", class: "small danger", onclick: (e) => configure(e.currentTarget, { unset_listen: true }, "Stopped listening") }, "Stop listening"))
        : null,
    );
  }

  function editable(title, values, key, placeholder, hint) {
    const input = h("input", { placeholder, autocomplete: "off" });
    return card(
      title,
      values.length
        ? h("div", {}, values.map((v) => h("span", { class: "chip" }, v, h("button", {
            type: "button", title: `remove ${v}`,
            onclick: (e) => configure(e.currentTarget, { [`remove_${key}`]: [v] }, `Removed ${v}`),
          }, "✕"))))
        : h("p", { class: "muted" }, "None."),
      h("form", {
        class: "row", "data-testid": `proxy-${key}`, style: "margin-top:10px",
        onsubmit: (e) => { e.preventDefault(); configure(e.submitter, { [`add_${key}`]: words(input.value) }, "Saved").then(() => { input.value = ""; }); },
      }, field("Add", input, hint), h("div", { class: "field" }, h("button", { type: "submit" }, "Add"))),
    );
  }

  async function refresh() {
    let config;
    try {
      config = await get(base);
    } catch (exc) {
      if (ctx.live()) clear(top, errorBanner(exc.message));
      return;
    }
    if (!ctx.live()) return;
    clear(
      top,
      h("div", { class: "grid2" },
        entranceCard(config),
        editable("Targets this endpoint serves as an exit", config.targets, "targets", "*.corp.example 10.0.0.0/8", "Domain patterns, IPs or CIDRs, separated by spaces"),
        editable("Exclusions", config.exclusions, "exclusions", "secret.corp.example", "Targets never served here, even if they match"),
      ),
      h("div", { style: "height:16px" }),
    );
    const action = h("select", { "aria-label": "action" }, h("option", { value: "allow" }, "allow"), h("option", { value: "deny" }, "deny"));
    const user = h("input", { placeholder: "* or alice", value: "*", autocomplete: "off" });
    const target = h("input", { placeholder: "*.corp.example", autocomplete: "off", required: true });
    clear(
      rulesBox,
      card(
        "Rules (first match wins)",
        table(
          [
            { label: "#", class: "num", cell: (r) => String(r.number) },
            { label: "Action", cell: (r) => badge(r.action, r.action === "allow" ? "ok" : "bad") },
            { label: "User", cell: (r) => r.user },
            { label: "Target", cell: (r) => h("span", { class: "mono" }, r.target) },
            {
              label: "",
              cell: (r) => h("button", { type: "button", class: "small danger", onclick: (e) => act(e.currentTarget, async () => { await del(`${base}/rules/${r.number}`); await refresh(); }, `Deleted rule ${r.number}`) }, "Delete"),
            },
          ],
          config.rules.map((r, i) => ({ number: i + 1, ...r })),
          { empty: "No rule: every user of the mesh may use this exit's targets." },
        ),
        h("form", {
          class: "row", "data-testid": "proxy-rule", style: "margin-top:10px",
          onsubmit: (e) => {
            e.preventDefault();
            act(e.submitter, async () => { await post(`${base}/rules`, { action: action.value, user: user.value.trim(), target: target.value.trim() }); target.value = ""; await refresh(); }, "Rule added");
          },
        }, field("Action", action), field("User", user), field("Target", target), h("div", { class: "field" }, h("button", { type: "submit" }, "Add rule"))),
      ),
    );
    try {
      const exits = await get(`${base}/exits`);
      if (!ctx.live()) return;
      clear(exitsBox, card("Exits in the mesh", table(
        [
          { label: "Endpoint", cell: (x) => h("strong", {}, x.name || x.ep) },
          { label: "User", cell: (x) => x.user },
          { label: "Status", cell: (x) => statusBadge(x.online ? "online" : "offline") },
          { label: "Targets", cell: (x) => chips(x.targets) },
          { label: "Excluded", cell: (x) => chips(x.exclusions) },
        ],
        exits,
        { empty: "No endpoint serves targets yet." },
      )));
    } catch (exc) {
      if (ctx.live()) clear(exitsBox, errorBanner(exc.message));
    }
  }

  await refresh();
}

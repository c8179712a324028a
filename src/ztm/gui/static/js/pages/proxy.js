// Proxy app: this endpoint's listen address (entrance) and its credentials, the targets it serves as an exit, its
// rules, its counters; the mesh's exits.

import { del, get, meshPath, post } from "../api.js";
import { act, badge, bytes, card, chips, clear, errorBanner, field, h, kv, pageHead, paths, statusBadge, table, toast, words } from "../ui.js";

// IPv6 text to its 8 groups, or null.
function v6Groups(text) {
  const halves = text.toLowerCase().split("::");
  if (halves.length > 2) return null;
  const part = (s) => {
    if (!s) return [];
    const groups = s.split(":");
    const last = groups[groups.length - 1];
    if (last.includes(".")) {
      const o = last.split(".").map((x) => (/^\d{1,3}$/.test(x) ? Number(x) : NaN));
      if (o.length !== 4 || o.some((x) => !(x <= 255))) return [NaN];
      groups.splice(-1, 1, ((o[0] << 8) | o[1]).toString(16), ((o[2] << 8) | o[3]).toString(16));
    }
    return groups.map((x) => (/^[0-9a-f]{1,4}$/.test(x) ? parseInt(x, 16) : NaN));
  };
  const head = part(halves[0]);
  const tail = halves.length === 2 ? part(halves[1]) : [];
  const fill = halves.length === 2 ? 8 - head.length - tail.length : 0;
  if (fill < 0) return null;
  const groups = [...head, ...Array(fill).fill(0), ...tail];
  return groups.length === 8 && groups.every((n) => Number.isInteger(n)) ? groups : null;
}

// The listen address when the entrance serves beyond loopback without credentials, else null: the rule of the
// CLI's warning (`ztm proxy get|config`, src/ztm/cli/proxy.py `_exposed`).
export function exposedListen(config) {
  const listen = config.listen;
  if (typeof listen !== "string" || config.listening !== true || config.auth) return null;
  let host;
  if (listen.startsWith("[")) {
    const end = listen.indexOf("]");
    if (end < 0 || listen[end + 1] !== ":") return null;
    host = listen.slice(1, end);
    const groups = v6Groups(host);
    if (!groups) return null;
    return groups.slice(0, 7).every((g) => g === 0) && groups[7] === 1 ? null : listen;
  }
  if (listen.split(":").length !== 2) return null;
  host = listen.split(":")[0];
  if (host === "localhost") return null;
  if (/^\d{1,3}(\.\d{1,3}){3}$/.test(host)) return host.split(".")[0] === "127" ? null : listen;
  return listen;  // a name, not an IP address: the CLI warns too
}

// Counters shown even at zero (entrance side, exit side); the others appear once they are not zero.
const COUNTERS = [
  ["connections", "entrance:connections", null],
  ["streams", "entrance:streams", "exit:streams"],
  ["direct", "entrance:direct", "exit:direct"],
  ["direct fallbacks (via hub)", "entrance:direct_fallbacks", null],
  ["unauthorized", "entrance:unauthorized", null],
  ["refused / denied", "entrance:refused", "exit:denied"],
  ["failed", null, "exit:failed"],
  ["malformed", "entrance:malformed", null],
  ["active", "entrance:active", "exit:active"],
  ["sent", "entrance:sent", "exit:sent"],
  ["received", "entrance:received", "exit:received"],
];
const ALWAYS = new Set(["entrance:connections", "entrance:streams", "entrance:direct", "entrance:direct_fallbacks", "entrance:unauthorized", "exit:streams", "exit:direct"]);
const isBytes = (key) => /:(sent|received)$/.test(key);

export async function render(ctx) {
  const base = meshPath(ctx.mesh, "apps", "proxy");
  const top = h("div");
  const countersBox = h("div");
  const rulesBox = h("div");
  const exitsBox = h("div");
  ctx.root.append(
    pageHead("Proxy", "A SOCKS5 and HTTP proxy here that leaves the mesh through the exits that serve the target."),
    top,
    h("div", { class: "grid2" }, rulesBox, h("div", {}, exitsBox, h("div", { style: "height:16px" }), countersBox)),
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

  function credentialsCard(config) {
    const auth = config.auth;
    const user = h("input", { name: "auth-user", placeholder: "alice", autocomplete: "off", spellcheck: "false", required: true, value: auth ? auth.user : "" });
    const password = h("input", { name: "password", type: "password", autocomplete: "new-password", required: true });
    const confirmed = h("input", { name: "confirm", type: "password", autocomplete: "new-password", required: true });
    const setAuth = (button) => {
      if (password.value !== confirmed.value) {
        confirmed.setAttribute("aria-invalid", "true");
        toast("The two passwords differ: type the same password twice", "error");
        confirmed.focus();
        return;
      }
      confirmed.removeAttribute("aria-invalid");
      const body = { set_auth: { user: user.value.trim(), password: password.value } };
      password.value = "";
      confirmed.value = "";
      configure(button, body, `Credentials set for ${body.set_auth.user}`);
    };
    return card(
      "Credentials of the entrance",
      h("div", { "data-testid": "proxy-auth" }, kv([
        ["credentials", auth ? badge("set", "ok") : badge("none")],
        ["user", auth ? h("strong", { "data-testid": "proxy-auth-user" }, auth.user) : h("span", { class: "muted" }, "any client, no password")],
      ])),
      h("form", {
        "data-testid": "proxy-set-auth", style: "margin-top:12px",
        onsubmit: (e) => { e.preventDefault(); setAuth(e.submitter); },
      },
      field("User name", user, "SOCKS5 username/password and HTTP Basic; no ':'"),
      h("div", { class: "row" },
        field("Password", password),
        field("Password again", confirmed)),
      h("div", { class: "actions", style: "margin-top:10px" },
        auth ? h("button", { type: "button", class: "danger", "data-testid": "proxy-clear-auth", onclick: (e) => configure(e.currentTarget, { clear_auth: true }, "Credentials cleared") }, "Clear credentials") : null,
        h("button", { class: "primary", type: "submit" }, auth ? "Change credentials" : "Set credentials"))),
    );
  }

  function drawCounters(config) {
    const c = config.counters || {};
    const byPath = config.paths || {};
    const value = (key) => (key === null ? "" : key.startsWith("paths:") ? paths(byPath[key.slice(6)]) : isBytes(key) ? bytes(c[key] || 0) : String(c[key] || 0));
    const rows = COUNTERS.filter(([, a, b]) => [a, b].some((k) => k !== null && (ALWAYS.has(k) || c[k])))
      .map(([label, entrance, exit]) => ({ label, entrance, exit }));
    rows.push({ label: "paths", entrance: "paths:entrance", exit: "paths:exit" });
    const known = new Set(COUNTERS.flatMap(([, a, b]) => [a, b]));
    const others = Object.entries(c).filter(([k, v]) => !known.has(k) && v);
    clear(countersBox, card(
      "Counters",
      table(
        [
          { label: "Counter", cell: (r) => r.label },
          { label: "Entrance", class: "num", cell: (r) => value(r.entrance) },
          { label: "Exit", class: "num", cell: (r) => value(r.exit) },
        ],
        rows,
        { testid: "proxy-counters" },
      ),
      others.length
        ? h("p", { class: "muted small", style: "margin:10px 0 0" }, others.map(([k, v]) => `${k} ${isBytes(k) ? bytes(v) : v}`).join(" · "))
        : null,
    ));
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
    const exposed = exposedListen(config);
    clear(
      top,
      exposed
        ? h("p", { class: "banner warn", role: "alert", "data-testid": "proxy-open-warning" },
          h("strong", {}, "Open proxy: "),
          `${exposed} is reachable beyond this machine and asks for no credentials, so anyone who can reach it uses the mesh as this endpoint. Set credentials, or listen on 127.0.0.1.`)
        : null,
      h("div", { class: "grid2" }, entranceCard(config), credentialsCard(config)),
      h("div", { style: "height:16px" }),
      h("div", { class: "grid2" },
        editable("Targets this endpoint serves as an exit", config.targets, "targets", "*.corp.example 10.0.0.0/8", "Domain patterns, IPs or CIDRs, separated by spaces"),
        editable("Exclusions", config.exclusions, "exclusions", "secret.corp.example", "Targets never served here, even if they match"),
      ),
      h("div", { style: "height:16px" }),
    );
    drawCounters(config);
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
          { label: "Used here", cell: (x) => (x.used ? "yes" : "no") },
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
  ctx.every(3_000, async () => {  // the counters only: the forms keep what is being typed
    try {
      const config = await get(base);
      if (ctx.live()) drawCounters(config);
    } catch { /* shown at the next full refresh */ }
  });
}

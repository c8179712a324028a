// Terminal app: a shell on an endpoint in the browser (xterm.js over the agent's WebSocket session route),
// and who may open sessions on this endpoint.

import { Terminal } from "../../vendor/xterm/xterm.mjs";
import { FitAddon } from "../../vendor/xterm/addon-fit.mjs";
import { get, meshPath, post, seg, wsUrl } from "../api.js";
import { act, badge, card, clear, errorBanner, field, h, kv, pageHead, words } from "../ui.js";

function ensureCss() {
  if (document.getElementById("xterm-css")) return;
  document.head.append(h("link", { id: "xterm-css", rel: "stylesheet", href: "/gui/vendor/xterm/xterm.css" }));
}

const THEMES = {
  dark: { background: "#0b0f14", foreground: "#e6edf3", cursor: "#5eead4", selectionBackground: "#2dd4bf55" },
};

export async function render(ctx) {
  ensureCss();
  const base = meshPath(ctx.mesh, "apps", "terminal");
  const eps = await get(meshPath(ctx.mesh, "endpoints"));
  const target = h("select", { "aria-label": "endpoint", "data-testid": "term-target" },
    eps.filter((e) => e.online).sort((a, b) => (b.is_local - a.is_local) || a.name.localeCompare(b.name))
      .map((e) => h("option", { value: e.name }, e.is_local ? `${e.name} (this endpoint)` : e.name)));
  const state = h("span", { "data-testid": "term-state" }, badge("not connected"));
  const box = h("div", { class: "term-box", "data-testid": "terminal" });
  const problem = h("div");
  const connect = h("button", { class: "primary", type: "button", "data-testid": "term-connect" }, "Open shell");
  const hangup = h("button", { type: "button", class: "danger", disabled: true }, "Hang up");
  const config = h("div");

  ctx.root.append(
    pageHead("Terminal", "A shell on an endpoint of the mesh, through the hub. The endpoint's owner and the users it lists may open one, once its owner turned sessions on there."),
    h("section", { class: "card" },
      h("div", { class: "row", style: "margin-bottom:10px" }, field("Endpoint", target), h("div", { class: "field" }, h("div", { class: "actions" }, connect, hangup)), h("span", { class: "spacer" }), h("div", { class: "field" }, state)),
      problem,
      box),
    config,
  );

  const term = new Terminal({
    cursorBlink: true,
    fontFamily: getComputedStyle(document.body).getPropertyValue("--mono"),
    fontSize: 13,
    theme: THEMES.dark,
    scrollback: 5000,
  });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(box);
  fit.fit();
  term.writeln("\x1b[2mPick an endpoint and open a shell.\x1b[0m");
  const encoder = new TextEncoder();
  let ws = null;

  const setState = (text, kind = "") => clear(state, badge(text, kind));
  const send = (obj) => { if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(obj)); };

  term.onData((data) => { if (ws && ws.readyState === WebSocket.OPEN) ws.send(encoder.encode(data)); });
  term.onResize(({ cols, rows }) => send({ type: "resize", cols, rows }));
  const onWindowResize = () => { try { fit.fit(); } catch { /* hidden */ } };
  window.addEventListener("resize", onWindowResize);

  function close() {
    if (ws) { ws.onclose = null; ws.close(); ws = null; }
    connect.disabled = false;
    hangup.disabled = true;
  }

  connect.addEventListener("click", async () => {
    close();
    clear(problem);
    const ep = target.value;
    if (!ep) { clear(problem, errorBanner("No endpoint is online.")); return; }
    term.reset();
    fit.fit();
    let url;
    try {
      url = await wsUrl(`${base}/endpoints/${seg(ep)}/session`);
    } catch (exc) {
      clear(problem, errorBanner(exc.message));
      return;
    }
    ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    connect.disabled = true;
    hangup.disabled = false;
    setState("connecting", "warn");
    ws.onopen = () => ws.send(JSON.stringify({ type: "open", mode: "shell", cols: term.cols, rows: term.rows, term: "xterm-256color" }));
    ws.onmessage = (event) => {
      if (typeof event.data !== "string") {
        term.write(new Uint8Array(event.data, 1));
        return;
      }
      const msg = JSON.parse(event.data);
      if (msg.type === "started") { setState(`connected to ${ep}`, "ok"); term.focus(); }
      else if (msg.type === "exit") {
        setState(msg.signal ? `ended by ${msg.signal}` : `exited ${msg.code}`);
        term.writeln(`\r\n\x1b[2m[session ended: ${msg.signal ? "signal " + msg.signal : "exit " + msg.code}]\x1b[0m`);
      } else if (msg.type === "error") {
        setState("error", "bad");
        clear(problem, errorBanner(msg.error));
      }
    };
    ws.onclose = (event) => {
      if (state.textContent.startsWith("connect")) setState(event.code === 1000 ? "closed" : "disconnected", event.code === 1000 ? "" : "bad");
      ws = null;
      connect.disabled = false;
      hangup.disabled = true;
    };
  });
  hangup.addEventListener("click", () => { close(); setState("hung up"); term.writeln("\r\n\x1b[2m[hung up]\x1b[0m"); });
  ctx.onLeave(() => { close(); window.removeEventListener("resize", onWindowResize); term.dispose(); });

  async function drawConfig() {
    let c;
    try {
      c = await get(base);
    } catch (exc) {
      clear(config, errorBanner(exc.message));
      return;
    }
    const users = h("input", { placeholder: "alice bob", autocomplete: "off" });
    clear(config, card("Sessions on this endpoint",
      kv([
        ["sessions in", c.enabled ? "on" : "off: nobody may open one here"],
        ["shell", h("span", { class: "mono" }, c.effective_shell)],
        ["owner", c.owner],
        ["also allowed", c.users.length ? c.users.join(", ") : "nobody else"],
        ["sessions", `${c.active} open, ${c.sessions} in all, ${c.refused} refused`],
      ]),
      h("div", { class: "actions" }, h("button", {
        type: "button", class: c.enabled ? "small danger" : "small", "data-testid": "term-enable",
        title: "Whoever runs the mesh's hub could pose as the owner: turn sessions on only if you trust it with a shell.",
        onclick: (e) => act(e.currentTarget, async () => { await post(`${base}/config`, { enabled: !c.enabled }); await drawConfig(); }, c.enabled ? "Sessions off" : "Sessions on"),
      }, c.enabled ? "Turn sessions off" : "Turn sessions on")),
      h("form", {
        class: "row", style: "margin-top:12px",
        onsubmit: (e) => { e.preventDefault(); act(e.submitter, async () => { await post(`${base}/config`, { add_users: words(users.value) }); await drawConfig(); }, "Users allowed"); },
      }, field("Allow users", users, "They may open shells on this endpoint."), h("div", { class: "field" }, h("button", { type: "submit" }, "Allow"))),
      c.users.length
        ? h("div", { class: "actions" }, h("button", {
            type: "button", class: "small danger",
            onclick: (e) => act(e.currentTarget, async () => { await post(`${base}/config`, { del_users: c.users }); await drawConfig(); }, "Only the owner may now"),
          }, "Allow nobody else"))
        : null));
  }
  await drawConfig();
}

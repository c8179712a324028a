// Settings: theme, default mesh, this agent's identity, a sign-in link for another browser, sign out.

import { get, post, signOut } from "../api.js";
import { applyTheme } from "../main.js";
import { act, card, field, h, kv, pageHead, toast } from "../ui.js";

export async function render(ctx) {
  const [version, identity] = await Promise.all([get("/api/version"), get("/api/identity")]);
  const theme = h("select", { "aria-label": "theme" },
    [["auto", "Follow the system"], ["light", "Light"], ["dark", "Dark"]].map(([v, l]) => h("option", { value: v }, l)));
  theme.value = localStorage.getItem("ztm.theme") || "auto";
  theme.addEventListener("change", () => { localStorage.setItem("ztm.theme", theme.value); applyTheme(); });
  const mesh = h("select", { "aria-label": "default mesh" }, ctx.meshes.map((m) => h("option", { value: m.name }, m.name)));
  mesh.value = ctx.mesh;
  mesh.addEventListener("change", () => ctx.setMesh(mesh.value));
  const link = h("div");
  const pem = identity.public_key.trim();

  ctx.root.append(
    pageHead("Settings", "Kept in this browser, except what the agent reports."),
    h("div", { class: "grid2" },
      card("Appearance", field("Theme", theme), field("Mesh the pages act on", mesh, ctx.meshes.length ? "" : "Join a mesh first.")),
      card("This agent",
        kv([
          ["ztm version", version.ztm],
          ["API version", String(version.api)],
          ["address", location.host],
          ["meshes", String(ctx.meshes.length)],
        ]),
        h("h3", {}, "Identity (public key)"),
        h("p", { class: "muted small" }, "Send it to a mesh's root user, who runs 'ztm invite USER --identity FILE'."),
        h("pre", { class: "small wrap", "data-testid": "identity" }, pem),
        h("div", { class: "actions", style: "margin-top:8px" },
          h("button", { type: "button", class: "small", onclick: async () => {
            try { await navigator.clipboard.writeText(pem + "\n"); toast("Public key copied"); } catch { toast("Copy is not allowed here: select the text instead", "error"); }
          } }, "Copy"),
          h("button", { type: "button", class: "small", onclick: () => {
            const a = h("a", { href: URL.createObjectURL(new Blob([pem + "\n"], { type: "application/x-pem-file" })), download: "identity.pem" });
            a.click();
            setTimeout(() => URL.revokeObjectURL(a.href), 1000);
          } }, "Download identity.pem"))),
      card("Sign in elsewhere",
        h("p", {}, "Make a one-time link that signs in another browser on a machine that reaches this agent (works once, for 10 minutes)."),
        h("div", { class: "actions" },
          h("button", { type: "button", onclick: async (e) => {
            const made = await act(e.currentTarget, () => post("/api/gui/signin-codes", {}));
            if (made) link.replaceChildren(h("pre", { class: "small wrap" }, `${location.origin}${made.path}`));
          } }, "Make a sign-in link")),
        link),
      card("Session",
        h("p", {}, "Your session lasts until you sign out or the agent restarts. Scripts use the API token instead ('Authorization: Bearer TOKEN')."),
        h("div", { class: "actions" }, h("button", { class: "danger", type: "button", onclick: async () => { await signOut(); location.replace("/gui/?signin=out"); } }, "Sign out"))),
    ),
  );
}

// The app shell: sign-in gate, mesh picker, theme, hash router. Each page is a module exporting `render(ctx)`.

import { ApiError, get, signIn, signOut, whenSignedOut } from "./api.js";
import { clear, errorBanner, h, statusBadge } from "./ui.js";

const PAGES = ["meshes", "endpoints", "apps", "tunnel", "proxy", "terminal", "files", "policy", "audit", "logs", "settings"];
const NEEDS_MESH = new Set(["endpoints", "apps", "tunnel", "proxy", "terminal", "files", "policy", "audit"]);
const SIGNIN_REASONS = {
  expired: "That sign-in link was used already or has expired. Run 'ztm gui' for a new one.",
  wrong: "That code or token is not right. Run 'ztm gui' for a new link.",
  out: "You are signed out.",
};

const state = { meshes: [], mesh: localStorage.getItem("ztm.mesh") || "", page: null, cleanups: [] };

// ---- theme ----
export function applyTheme(choice = localStorage.getItem("ztm.theme") || "auto") {
  const dark = choice === "dark" || (choice === "auto" && matchMedia("(prefers-color-scheme: dark)").matches);
  document.documentElement.dataset.theme = dark ? "dark" : "light";
}
applyTheme();
matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => applyTheme());

// ---- sign-in gate ----
function showSignin(reason) {
  document.getElementById("shell").hidden = true;
  document.getElementById("signin").hidden = false;
  const banner = document.getElementById("signin-reason");
  banner.hidden = !reason;
  banner.textContent = reason || "";
  banner.className = reason === SIGNIN_REASONS.out ? "banner info" : "banner error";
  document.title = "ztm · sign in";
}
whenSignedOut(() => showSignin("Your session has ended (the agent restarted, or you signed out). Sign in again."));

// ---- meshes ----
export async function loadMeshes() {
  state.meshes = await get("/api/meshes");
  const names = state.meshes.map((m) => m.name);
  if (!names.includes(state.mesh)) state.mesh = names[0] || "";
  const select = document.getElementById("mesh-select");
  clear(
    select,
    names.length ? names.map((n) => h("option", { value: n }, n)) : h("option", { value: "" }, "no mesh joined"),
  );
  select.value = state.mesh;
  select.disabled = names.length === 0;
  const current = state.meshes.find((m) => m.name === state.mesh);
  const holder = document.getElementById("mesh-status");
  holder.replaceWith(Object.assign(statusBadge(current ? current.status : ""), { id: "mesh-status" }));
  if (!current) document.getElementById("mesh-status").textContent = "";
  return state.meshes;
}

function setMesh(name) {
  state.mesh = name;
  localStorage.setItem("ztm.mesh", name);
}

// ---- router ----
function cleanup() {
  for (const fn of state.cleanups.splice(0)) {
    try { fn(); } catch { /* a page's own teardown */ }
  }
}

async function route() {
  const name = (location.hash.replace(/^#\/?/, "").split("/")[0] || "meshes").toLowerCase();
  const page = PAGES.includes(name) ? name : "meshes";
  cleanup();
  state.page = page;
  for (const link of document.querySelectorAll("#nav a")) link.classList.toggle("active", link.dataset.page === page);
  document.getElementById("nav").classList.remove("open");
  document.title = `ztm · ${page}`;
  const root = document.getElementById("page");
  clear(root, h("p", { class: "muted" }, "Loading…"));
  const token = {};
  state.token = token;
  const ctx = {
    root,
    mesh: state.mesh,
    meshes: state.meshes,
    live: () => state.token === token,
    every(ms, fn) {
      const id = setInterval(() => { if (!document.hidden) fn(); }, ms);
      state.cleanups.push(() => clearInterval(id));
    },
    onLeave(fn) { state.cleanups.push(fn); },
    refreshMeshes: loadMeshes,
    setMesh: (m) => { setMesh(m); route(); },
    rerender: () => route(),
  };
  if (NEEDS_MESH.has(page) && !state.mesh) {
    clear(
      root,
      h("div", { class: "page-head" }, h("h1", {}, page[0].toUpperCase() + page.slice(1))),
      h(
        "section",
        { class: "card" },
        h("p", {}, "This agent has not joined a mesh yet."),
        h("a", { href: "#/meshes" }, "Join a mesh with a permit →"),
      ),
    );
    return;
  }
  try {
    const module = await import(`./pages/${page}.js`);
    if (state.token !== token) return;
    clear(root);
    await module.render(ctx);
  } catch (exc) {
    if (state.token !== token) return;
    if (exc instanceof ApiError && exc.status === 401) return;
    clear(root, errorBanner(exc.message || String(exc)));
  }
}

// ---- sign in: the link's code (in the fragment, never sent to a server) or the form ----
document.getElementById("signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = event.currentTarget.elements.code;
  try {
    await signIn(input.value.trim());
  } catch (exc) {
    showSignin(exc instanceof ApiError && exc.status === 401 ? SIGNIN_REASONS.wrong : exc.message);
    return;
  }
  input.value = "";
  location.replace("/gui/");
});

async function start() {
  const params = new URLSearchParams(location.search);
  let reason = SIGNIN_REASONS[params.get("signin")];
  const code = location.hash.startsWith("#signin=") ? decodeURIComponent(location.hash.slice(8)) : null;
  if (params.has("signin") || code !== null) history.replaceState(null, "", location.pathname + (code === null ? location.hash : ""));
  if (code !== null) {
    try {
      await signIn(code);
    } catch {
      reason = SIGNIN_REASONS.expired;
    }
  }
  let version;
  try {
    version = await get("/api/version");
  } catch (exc) {
    if (exc instanceof ApiError && exc.status === 401) {
      showSignin(reason);
      return;
    }
    document.body.prepend(errorBanner(exc.message));
    return;
  }
  document.getElementById("signin").hidden = true;
  document.getElementById("shell").hidden = false;
  document.getElementById("agent-version").textContent = `agent ${version.ztm}`;
  document.getElementById("mesh-select").addEventListener("change", (e) => { setMesh(e.target.value); loadMeshes(); route(); });
  document.getElementById("signout").addEventListener("click", async () => { await signOut(); location.replace("/gui/?signin=out"); });
  document.getElementById("menu").addEventListener("click", () => document.getElementById("nav").classList.toggle("open"));
  document.getElementById("theme").addEventListener("click", () => {
    const dark = document.documentElement.dataset.theme === "dark";
    localStorage.setItem("ztm.theme", dark ? "light" : "dark");
    applyTheme();
  });
  window.addEventListener("hashchange", route);
  await loadMeshes().catch(() => []);
  setInterval(() => { if (!document.hidden) loadMeshes().catch(() => {}); }, 5000);
  route();
}

start();

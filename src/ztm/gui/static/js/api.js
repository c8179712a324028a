// The agent's local API, as the GUI calls it: same origin, the session in the X-Ztm-Session header. The session is
// kept in this origin's localStorage (scheme, host AND port): a page on another port of the same host cannot read it,
// and the browser never sends it anywhere by itself (a cookie would go to every port of the host).

const SESSION_KEY = "ztm.session";
export const session = () => localStorage.getItem(SESSION_KEY);
const forget = () => localStorage.removeItem(SESSION_KEY);
const auth = () => (session() ? { "X-Ztm-Session": session() } : {});

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let signedOut = () => {};
const onUnauthorized = () => { forget(); signedOut(); };
export function whenSignedOut(callback) { signedOut = callback; }

async function decode(response, what) {
  const text = await response.text();
  let body = null;
  if (text) {
    try { body = JSON.parse(text); } catch { body = text; }
  }
  if (!response.ok) {
    const message = body && typeof body === "object" && body.error ? body.error : `${what}: HTTP ${response.status}`;
    if (response.status === 401) onUnauthorized();
    throw new ApiError(response.status, message, body && body.code);
  }
  return body;
}

export async function api(method, path, body) {
  const init = { method, credentials: "omit", headers: { Accept: "application/json", ...auth() } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (exc) {
    throw new ApiError(0, `the agent does not answer (${exc.message}); is it running?`, "unreachable");
  }
  return decode(response, `${method} ${path}`);
}

export const get = (path) => api("GET", path);
export const post = (path, body = {}) => api("POST", path, body);
export const del = (path) => api("DELETE", path);

// Sign in with a one-time code (or the API token): the agent answers with a session for this origin's storage.
export async function signIn(code) {
  const response = await fetch("/gui/session", {
    method: "POST", credentials: "omit", headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify({ code }),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok || typeof body.session !== "string") throw new ApiError(response.status, body.error || `HTTP ${response.status}`, body.code);
  localStorage.setItem(SESSION_KEY, body.session);
}

export async function signOut() {
  try {
    await fetch("/gui/signout", { method: "POST", credentials: "omit", headers: auth() });
  } finally {
    forget();
  }
}

// A WebSocket URL for `path` with a single-use ticket (a browser cannot add headers to a WebSocket).
export async function wsUrl(path) {
  const { ticket } = await api("POST", "/api/gui/ws-tickets", {});
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}${path}?ticket=${encodeURIComponent(ticket)}`;
}

export const seg = (value) => encodeURIComponent(value);
export const meshPath = (mesh, ...parts) => ["/api/meshes", seg(mesh), ...parts].join("/");

// Byte transfers with progress (fetch has no upload progress): XMLHttpRequest, same origin, session header.
export function transfer({ method, url, body, contentType, onProgress, responseType = "json" }) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open(method, url);
    xhr.responseType = responseType;
    if (contentType) xhr.setRequestHeader("Content-Type", contentType);
    for (const [name, value] of Object.entries(auth())) xhr.setRequestHeader(name, value);
    const report = (event) => onProgress && onProgress(event.loaded, event.lengthComputable ? event.total : null);
    (body ? xhr.upload : xhr).addEventListener("progress", report);
    xhr.addEventListener("load", async () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        resolve(xhr.response);
        return;
      }
      let message = `HTTP ${xhr.status}`;
      try {
        const raw = xhr.response instanceof Blob ? await xhr.response.text() : xhr.response;
        const parsed = typeof raw === "string" ? JSON.parse(raw) : raw;
        if (parsed && parsed.error) message = parsed.error;
      } catch { /* keep the status line */ }
      if (xhr.status === 401) onUnauthorized();
      reject(new ApiError(xhr.status, message));
    });
    xhr.addEventListener("error", () => reject(new ApiError(0, "the transfer failed: the agent closed the connection")));
    xhr.send(body || null);
  });
}

// The agent's local API, as the GUI calls it: same origin, the session cookie does the authentication.

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let onUnauthorized = () => {};
export function whenSignedOut(callback) { onUnauthorized = callback; }

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
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
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

export const seg = (value) => encodeURIComponent(value);
export const meshPath = (mesh, ...parts) => ["/api/meshes", seg(mesh), ...parts].join("/");

// Byte transfers with progress (fetch has no upload progress): XMLHttpRequest, same origin, cookie sent.
export function transfer({ method, url, body, contentType, onProgress, responseType = "json" }) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open(method, url);
    xhr.responseType = responseType;
    if (contentType) xhr.setRequestHeader("Content-Type", contentType);
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

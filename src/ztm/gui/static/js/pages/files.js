// Files app: browse the mesh's file space, upload (with progress), download to this browser (mesh fetch, then bytes);
// a file's holders (complete and partial); this endpoint's mesh downloads (progress, sources, cancel).

import { del, get, meshPath, post, transfer } from "../api.js";
import { act, ago, badge, bytes, card, chips, clear, errorBanner, field, h, kv, pageHead, statusBadge, table, toast } from "../ui.js";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const STATE_KIND = { running: "warn", done: "ok", failed: "bad", abandoned: "bad", cancelled: "" };
const counts = (map) => Object.entries(map || {}).filter(([, n]) => n).map(([name, n]) => `${name} ${n}`);

export async function render(ctx) {
  const base = meshPath(ctx.mesh, "apps", "files");
  const me = (ctx.meshes.find((m) => m.name === ctx.mesh) || {}).user || "root";
  let folder = sessionStorage.getItem(`ztm.files.${ctx.mesh}`) || "/";
  const crumbs = h("div", { class: "row", style: "align-items:center;margin-bottom:10px" });
  const listing = h("div");
  const transfers = h("div", { "data-testid": "transfers" });
  const transfersCard = card("Transfers", transfers);
  transfersCard.hidden = true;

  const detailBox = h("div");
  const downloadsBox = h("div");
  const cloudBox = h("div");
  let selected = null;  // the path whose holders are shown
  let running = false;  // a mesh download runs: its list refreshes often
  const file = h("input", { type: "file", multiple: true, "aria-label": "files to upload", "data-testid": "upload-input" });
  const dest = h("input", { value: `/shared/${me}/`, autocomplete: "off", "aria-label": "destination folder", spellcheck: "false" });
  ctx.root.append(
    pageHead("Files", `The file space of mesh ${ctx.mesh}: /shared/USER/ is readable by everyone, /users/USER/ by its owner only.`),
    h("div", { class: "grid2" },
      card("Upload",
        h("form", {
          "data-testid": "upload-form",
          onsubmit: async (e) => { e.preventDefault(); await upload(e.submitter); },
        },
        field("Files", file),
        field("To folder", dest, `You may write below /shared/${me}/ and /users/${me}/.`),
        h("div", { class: "actions" }, h("button", { class: "primary", type: "submit" }, "Upload")))),
      transfersCard),
    h("div", { style: "height:16px" }),
    h("section", { class: "card" }, crumbs, listing),
    detailBox,
    downloadsBox,
    cloudBox,
  );

  function row(name) {
    const bar = h("progress", { max: 1, value: 0 });
    const note = h("span", { class: "muted small" }, "starting…");
    const el = h("div", { class: "transfer" }, h("span", { class: "mono" }, name), bar, note);
    transfersCard.hidden = false;
    transfers.prepend(el);
    return {
      progress(done, total, text) {
        if (total) { bar.max = total; bar.value = done; } else bar.removeAttribute("value");
        note.textContent = text || (total ? `${Math.floor((100 * done) / total)} %` : bytes(done));
      },
      finish(text, ok = true) { bar.max = 1; bar.value = ok ? 1 : 0; note.textContent = text; el.dataset.state = ok ? "done" : "failed"; },
    };
  }

  async function upload(button) {
    const folderPath = dest.value.trim().replace(/\/?$/, "/");
    const chosen = [...file.files];
    if (!chosen.length) { toast("Choose a file first", "error"); return; }
    button.disabled = true;
    try {
      for (const f of chosen) {
        const path = folderPath + f.name;
        const line = row(`↑ ${path}`);
        try {
          const url = `${base}/content?path=${encodeURIComponent(path)}&time=${Math.floor(f.lastModified / 1000)}`;
          await transfer({ method: "POST", url, body: f, contentType: "application/octet-stream", onProgress: (d, t) => line.progress(d, t || f.size) });
          line.finish(`uploaded ${bytes(f.size)}`);
        } catch (exc) {
          line.finish(exc.message, false);
          toast(exc.message, "error");
        }
      }
      file.value = "";
      folder = folderPath;
      await refresh();
    } finally {
      button.disabled = false;
    }
  }

  async function download(button, entry) {
    const line = row(`↓ ${entry.path}`);
    button.disabled = true;
    try {
      if (entry.local !== "complete") {
        await post(`${base}/downloads`, { path: entry.path });
        drawDownloads();
        for (;;) {
          const jobs = await get(`${base}/downloads?path=${encodeURIComponent(entry.path)}`);
          const job = jobs[jobs.length - 1];
          if (!job) throw new Error("the download disappeared");
          line.progress(job.chunks_done || 0, job.chunks || 1, `fetching from the mesh: ${job.chunks_done || 0}/${job.chunks || "?"} chunks`);
          if (job.state !== "running" && job.state !== "done") throw new Error(job.error || `the download ${job.state}`);
          if (job.state === "done") break;
          await sleep(300);
        }
      }
      const blob = await transfer({
        method: "GET", url: `${base}/content?path=${encodeURIComponent(entry.path)}`, responseType: "blob",
        onProgress: (d, t) => line.progress(d, t || entry.size),
      });
      const a = h("a", { href: URL.createObjectURL(blob), download: entry.path.split("/").pop() });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
      line.finish(`downloaded ${bytes(blob.size)}`);
      refresh();
    } catch (exc) {
      line.finish(exc.message, false);
      toast(exc.message, "error");
    } finally {
      button.disabled = false;
    }
  }

  function drawCrumbs() {
    const parts = folder.split("/").filter(Boolean);
    const links = [h("a", { href: "#/files", onclick: (e) => { e.preventDefault(); go("/"); } }, "/")];
    parts.forEach((p, i) => {
      const target = `/${parts.slice(0, i + 1).join("/")}/`;
      links.push(h("a", { href: "#/files", onclick: (e) => { e.preventDefault(); go(target); } }, `${p}/`));
    });
    clear(crumbs, h("strong", {}, "Folder "), h("span", { class: "mono", "data-testid": "crumbs" }, links),
      h("span", { class: "spacer" }),
      h("button", { type: "button", class: "small", onclick: (e) => act(e.currentTarget, refresh) }, "Refresh"));
  }

  function go(target) {
    folder = target;
    sessionStorage.setItem(`ztm.files.${ctx.mesh}`, folder);
    refresh();
  }

  async function refresh() {
    drawCrumbs();
    let entries;
    try {
      entries = await get(`${base}?prefix=${encodeURIComponent(folder)}`);
    } catch (exc) {
      if (ctx.live()) clear(listing, errorBanner(exc.message));
      return;
    }
    if (!ctx.live()) return;
    const folders = new Set();
    const here = [];
    for (const e of entries) {
      if (!e.path.startsWith(folder)) continue;
      const rest = e.path.slice(folder.length);
      if (rest.includes("/")) folders.add(rest.split("/")[0]);
      else here.push(e);
    }
    const rows = [...[...folders].sort().map((name) => ({ folder: name })), ...here.sort((a, b) => a.path.localeCompare(b.path))];
    clear(listing, table(
      [
        {
          label: "Name",
          cell: (r) => (r.folder
            ? h("a", { href: "#/files", onclick: (e) => { e.preventDefault(); go(`${folder}${r.folder}/`); } }, `📁 ${r.folder}/`)
            : h("span", { class: "mono" }, r.path.slice(folder.length))),
        },
        { label: "Size", class: "num", cell: (r) => (r.folder ? "" : bytes(r.size)) },
        { label: "Sources", class: "num", cell: (r) => (r.folder || typeof r.sources !== "number" ? "" : String(r.sources)) },
        { label: "Publisher", cell: (r) => (r.folder ? "" : r.publisher || "–") },
        { label: "Modified", cell: (r) => (r.folder ? "" : ago(r.time)) },
        { label: "Here", cell: (r) => (r.folder ? "" : badge(r.local === "complete" ? "held" : r.local, r.local === "complete" ? "ok" : "")) },
        {
          label: "",
          cell: (r) => (r.folder ? "" : h("div", { class: "actions" },
            h("button", { type: "button", class: "small", "data-testid": `download-${r.path}`, onclick: (e) => download(e.currentTarget, r) }, "Download"),
            h("button", {
              type: "button", class: "small danger", title: "Unpublish (owner or root)",
              onclick: async (e) => {
                if (!confirm(`Unpublish ${r.path} from the mesh?`)) return;
                await act(e.currentTarget, async () => { await del(`${base}/file?path=${encodeURIComponent(r.path)}`); await refresh(); }, `Unpublished ${r.path}`);
              },
            }, "Delete"))),
        },
      ],
      rows,
      {
        testid: "files", empty: folder === "/" ? "No file in the mesh yet: upload one." : "Nothing in this folder.",
        onRow: (r) => { if (r.folder) go(`${folder}${r.folder}/`); else { selected = r.path; refresh(); } },
        selected: (r) => !r.folder && r.path === selected,
      },
    ));
    showDetail();
    drawDownloads();
  }

  // One file as the hub describes it: complete sources, and partial holders (still downloading) when it lists them.
  async function showDetail() {
    if (!selected) { clear(detailBox); return; }
    const path = selected;
    let f;
    try {
      f = await get(`${base}/file?path=${encodeURIComponent(path)}`);
    } catch (exc) {
      if (ctx.live() && selected === path) clear(detailBox, card(path, errorBanner(exc.message)));
      return;
    }
    if (!ctx.live() || selected !== path) return;
    const holders = [
      ...(Array.isArray(f.sources) ? f.sources : []).map((s) => ({ ...s, holds: "whole" })),
      ...(Array.isArray(f.partial) ? f.partial : []).map((s) => ({ ...s, holds: "partial" })),
    ];
    const acl = f.acl || {};
    clear(detailBox, h("section", { class: "card", "data-testid": "file-detail" },
      h("div", { class: "row", style: "align-items:center;margin-bottom:10px" },
        h("h2", { style: "margin:0" }, h("span", { class: "mono" }, f.path)),
        h("span", { class: "spacer" }),
        h("button", { type: "button", class: "small", onclick: () => { selected = null; refresh(); } }, "Close")),
      h("div", { class: "grid2" },
        kv([
          ["size", `${bytes(f.size)} (${f.size} B)`],
          ["chunks", f.chunks === undefined ? null : String(f.chunks)],
          ["publisher", f.publisher],
          ["modified", ago(f.time)],
          ["published", ago(f.published)],
          ["here", f.local],
          ["SHA-256", h("span", { class: "mono small" }, f.hash)],
          ["read-only for", acl.readonly && acl.readonly.length ? chips(acl.readonly) : null],
          ["blocked", acl.block && acl.block.length ? chips(acl.block) : null],
        ]),
        table(
          [
            { label: "Holder", cell: (s) => h("strong", {}, s.name || s.ep) },
            { label: "User", cell: (s) => s.user },
            { label: "Status", cell: (s) => statusBadge(s.online ? "online" : "offline") },
            {
              label: "Holds", class: "num",
              cell: (s) => (s.holds === "whole"
                ? "whole file"
                : [badge("partial", "warn"), ` ${s.held ?? "?"}/${f.chunks ?? "?"} chunks`]),
            },
          ],
          holders,
          { testid: "holders", empty: "No endpoint holds it now." },
        ))));
  }

  // This endpoint's mesh downloads: running, resumed after a restart, and recent.
  async function drawDownloads() {
    let jobs;
    try {
      jobs = await get(`${base}/downloads`);
    } catch (exc) {
      if (ctx.live()) clear(downloadsBox, card("Downloads on this endpoint", errorBanner(exc.message)));
      return;
    }
    if (!ctx.live()) return;
    running = jobs.some((j) => j.state === "running");
    const order = (j) => (j.state === "running" ? 0 : 1);
    jobs.sort((a, b) => order(a) - order(b) || String(b.started).localeCompare(String(a.started)));
    const progress = (j) => {
      const bar = h("progress", { max: Math.max(j.chunks, 1), value: j.state === "done" ? Math.max(j.chunks, 1) : j.chunks_done });
      if (!j.chunks && j.state === "running") bar.removeAttribute("value");
      const note = j.chunks ? `${j.chunks_done}/${j.chunks} chunks` : "looking up the file…";
      return h("div", { class: "progress-cell" }, bar,
        h("span", { class: "muted small" }, note, j.reused ? ` (${j.reused} already here)` : "", j.size != null ? ` · ${bytes(j.size)}` : ""));
    };
    const sources = (j) => {
      const got = counts(j.by_source);
      const lacking = counts(j.not_held);
      const problems = Object.entries(j.problems || {});
      return [
        got.length ? chips(got) : h("span", { class: "muted" }, "–"),
        lacking.length ? h("div", { class: "muted small" }, `not held: ${lacking.join(", ")}`) : null,
        problems.length ? h("div", { class: "bad-text small" }, problems.map(([name, why]) => `${name}: ${why}`).join("; ")) : null,
      ];
    };
    clear(downloadsBox, card(
      "Downloads on this endpoint",
      table(
        [
          { label: "File", cell: (j) => h("span", { class: "mono" }, j.path) },
          { label: "Progress", cell: progress },
          {
            label: "State",
            cell: (j) => h("div", { "data-testid": `download-state-${j.path}`, "data-state": j.state },
              badge(j.state, STATE_KIND[j.state] ?? ""),
              j.resumed ? [" ", badge("resumed", "")] : null,
              j.error && j.state !== "cancelled" ? h("div", { class: "bad-text small" }, j.error) : null),
          },
          { label: "From (chunks)", cell: sources },
          { label: "Started", cell: (j) => ago(j.started) },
          {
            label: "",
            cell: (j) => (j.state === "running"
              ? h("button", {
                type: "button", class: "small danger", "data-testid": `cancel-download-${j.path}`,
                title: "Stop it; the verified chunks stay here and a later download resumes from them",
                onclick: (e) => act(e.currentTarget, async () => { await del(`${base}/downloads?path=${encodeURIComponent(j.path)}`); await drawDownloads(); }, `Cancelled the download of ${j.path}`),
              }, "Cancel")
              : ""),
          },
        ],
        jobs,
        { testid: "downloads", empty: "No download from the mesh yet." },
      ),
    ));
  }

  async function drawCloud() {
    let c;
    try {
      c = await get(meshPath(ctx.mesh, "apps", "cloud"));
    } catch {
      clear(cloudBox);  // the cloud app is not running here
      return;
    }
    if (!ctx.live()) return;
    const dir = h("input", { value: c.local_dir || "", placeholder: "/home/me/ztm-cloud", autocomplete: "off", spellcheck: "false" });
    clear(cloudBox, card(
      "Cloud drive",
      h("p", { class: "muted" }, `A local directory of this machine kept in sync with ${c.root || `/users/${c.user}/`} (every ${c.interval} s).`),
      h("form", {
        class: "row",
        onsubmit: (e) => { e.preventDefault(); act(e.submitter, async () => { await post(meshPath(ctx.mesh, "apps", "cloud", "config"), { local_dir: dir.value.trim() }); await drawCloud(); }, "Cloud directory saved"); },
      }, field("Local directory", dir, "An absolute path on the agent's machine"), h("div", { class: "field" }, h("button", { type: "submit" }, "Save"))),
      table(
        [
          { label: "Mirrored path", cell: (m) => h("span", { class: "mono" }, m.path) },
          { label: "Down", cell: (m) => (m.download ? "yes" : "no") },
          { label: "Up", cell: (m) => (m.upload ? "yes" : "no") },
          { label: "Last scan", cell: (m) => ago(m.last_scan) },
          { label: "Moved", class: "num", cell: (m) => `↑${m.uploaded} ↓${m.downloaded}` },
          { label: "Problem", cell: (m) => (m.last_error ? h("span", { class: "bad-text small" }, m.last_error) : "") },
        ],
        c.mirrors,
        { empty: "Nothing mirrored yet ('ztm cloud mirror PATH')." },
      ),
    ));
  }

  await refresh();
  drawCloud();
  ctx.every(10_000, refresh);
  ctx.every(1_500, () => { if (running) drawDownloads(); });
}

// Files app: browse the mesh's file space, upload (with progress), download to this browser (mesh fetch, then bytes).

import { del, get, meshPath, post, transfer } from "../api.js";
import { act, ago, badge, bytes, card, clear, errorBanner, field, h, pageHead, table, toast } from "../ui.js";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export async function render(ctx) {
  const base = meshPath(ctx.mesh, "apps", "files");
  const me = (ctx.meshes.find((m) => m.name === ctx.mesh) || {}).user || "root";
  let folder = sessionStorage.getItem(`ztm.files.${ctx.mesh}`) || "/";
  const crumbs = h("div", { class: "row", style: "align-items:center;margin-bottom:10px" });
  const listing = h("div");
  const transfers = h("div", { "data-testid": "transfers" });
  const transfersCard = card("Transfers", transfers);
  transfersCard.hidden = true;

  const cloudBox = h("div");
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
        for (;;) {
          const jobs = await get(`${base}/downloads?path=${encodeURIComponent(entry.path)}`);
          const job = jobs[jobs.length - 1];
          if (!job) throw new Error("the download disappeared");
          line.progress(job.chunks_done || 0, job.chunks || 1, `fetching from the mesh: ${job.chunks_done || 0}/${job.chunks || "?"} chunks`);
          if (job.state === "failed" || job.error) throw new Error(job.error || "the download failed");
          if (job.state !== "running") break;
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
      { testid: "files", empty: folder === "/" ? "No file in the mesh yet: upload one." : "Nothing in this folder." },
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
}

// Policy: the mesh's access policy in force (highlighted), a draft to validate and test at the hub (a dry run) and to
// set, a check ("would it allow ...?"), the rules that let others reach this endpoint, and the history with rollback.
// The hub decides who may set or roll back (root and the policy's admins); the page only hides what would be refused.

import { ApiError, get, meshPath, post } from "../api.js";
import { errorLine, highlighted, readLenient } from "../hujson.js";
import { act, card, clear, errorBanner, field, h, kv, pageHead, table, toast } from "../ui.js";

const EXAMPLE = `{
  "groups":    {"group:ops": ["ops1", "ops2"]},
  "tagOwners": {"tag:db": ["root"]},            // who may give an endpoint this tag (a label "tag:db")
  "acls": [
    {"action": "accept", "src": ["group:ops"], "dst": ["tag:db:tunnel/tcp/pg"]},
    {"action": "accept", "src": ["*"],         "dst": ["*:files/shared/"]},
  ],
  "tests": [
    {"src": "ops1", "accept": ["tag:db:tunnel/tcp/pg"], "deny": ["tag:db:terminal"]},
  ],
}
`;

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "–";
}

export async function render(ctx) {
  const me = (ctx.meshes.find((m) => m.name === ctx.mesh) || {}).user || "";
  const current = h("div");
  const draftBox = h("div");
  const checkBox = h("div");
  const localBox = h("div", { "data-testid": "policy-local" });
  const historyBox = h("div");
  let policy = { version: 0, text: "" };
  let viewing = null; // an older version shown in the "In force" card

  const isAdmin = () => {
    if (me === "root") return true;
    const value = readLenient(policy.text);
    return Boolean(value && Array.isArray(value.admins) && value.admins.includes(me));
  };

  ctx.root.append(
    pageHead("Policy", `One access policy for mesh ${ctx.mesh}, kept by its hub. Once one is set, what no rule allows is refused.`,
      h("button", { type: "button", onclick: (e) => act(e.currentTarget, refresh) }, "Refresh")),
    current,
    h("div", { class: "grid2" }, draftBox, h("div", { class: "stack" }, checkBox, localBox)),
    historyBox,
  );

  function drawCurrent() {
    const shown = viewing || policy;
    const title = viewing ? `Version ${viewing.version} (not in force)` : "In force";
    if (!shown.version) {
      clear(current, card(title, h("p", { "data-testid": "policy-none" },
        "No policy is set: each app's own lists decide (tunnel users and entrances, proxy rules, terminal users, file ACLs). " +
        "Write one below, validate and test it, then set it.")));
      return;
    }
    clear(
      current,
      card(
        title,
        kv([
          ["version", h("span", { "data-testid": "policy-version" }, String(shown.version))],
          ["set by", shown.set_by || "–"],
          ["set at", when(shown.set_at)],
          ["you", `${me || "?"} (${isAdmin() ? "may change the policy" : "may read and check it; root and the policy's admins change it"})`],
        ]),
        h("div", { style: "margin-top:10px" }, highlighted(shown.text, { testid: "policy-text" })),
        viewing ? h("div", { class: "actions", style: "margin-top:8px" },
          h("button", { type: "button", class: "small", onclick: () => { viewing = null; drawCurrent(); } }, "Back to the version in force"),
          h("button", { type: "button", class: "small", onclick: () => { draft.value = viewing.text; drawDraftPreview(); } }, "Copy to the draft")) : null,
      ),
    );
  }

  // ---- draft: validate and test (dry run), set ----
  const draft = h("textarea", { rows: 16, wrap: "off", spellcheck: "false", class: "mono", "data-testid": "policy-draft", "aria-label": "draft policy" });
  const note = h("input", { placeholder: "why (shown in the history)", autocomplete: "off", "data-testid": "policy-note", "aria-label": "note" });
  const result = h("div", { "data-testid": "policy-result" });
  const preview = h("div");

  function drawDraftPreview(mark = 0) {
    clear(preview, draft.value.trim() ? highlighted(draft.value, { mark, testid: "policy-draft-view" }) : null);
  }

  function showOutcome(exc, ok) {
    if (exc) {
      clear(result, errorBanner(exc.message));
      drawDraftPreview(errorLine(exc.message));
    } else {
      clear(result, h("p", { class: "banner info", role: "status" }, ok));
      drawDraftPreview();
    }
  }

  async function submit(button, dryRun) {
    button.disabled = true;
    try {
      const answer = await post(meshPath(ctx.mesh, "policy"), { text: draft.value, dry_run: dryRun, note: dryRun ? "" : note.value.trim() });
      const tests = `${answer.tests} test${answer.tests === 1 ? "" : "s"} passed`;
      if (dryRun) {
        showOutcome(null, `Valid, and ${tests}: nothing was set (a dry run at the hub).`);
      } else {
        showOutcome(null, `Set as version ${answer.version} (${tests}). The hub sends it to every endpoint.`);
        toast(`Policy version ${answer.version} set`);
        note.value = "";
        await refresh();
      }
    } catch (exc) {
      showOutcome(exc);
    } finally {
      button.disabled = false;
    }
  }

  function drawDraft() {
    const admin = isAdmin();
    clear(
      draftBox,
      card(
        "Draft",
        h("p", { class: "muted small" }, "JSON with comments and trailing commas, in the shape of Tailscale's policy file. " +
          "The hub checks it (errors name the line and column) and runs its tests with the mesh's endpoints and tags."),
        field("Policy text", draft),
        admin ? field("Note", note) : null,
        h("div", { class: "actions" },
          h("button", { type: "button", class: "small", title: "the text in force, or an example when there is none", onclick: () => { draft.value = policy.text || EXAMPLE; drawDraftPreview(); clear(result); } }, "Reset the draft"),
          h("button", { type: "button", "data-testid": "policy-test", onclick: (e) => submit(e.currentTarget, true) }, "Validate and test"),
          admin
            ? h("button", { type: "button", class: "primary", "data-testid": "policy-set", onclick: (e) => submit(e.currentTarget, false) }, "Set policy")
            : null),
        admin ? null : h("p", { class: "muted small" }, "Only root and the policy's admins may set it; you can validate and test drafts."),
        result,
        preview,
      ),
    );
  }
  draft.addEventListener("input", () => drawDraftPreview());

  // ---- check: would it allow ...? ----
  function drawCheck() {
    const from = h("input", { name: "from", placeholder: "USER or USER@EP", autocomplete: "off", required: true });
    const to = h("input", { name: "to", placeholder: "endpoint name", autocomplete: "off", required: true });
    const target = h("input", { name: "target", placeholder: "tunnel/tcp/pg, terminal, files/shared/…", autocomplete: "off", required: true });
    const useDraft = h("input", { type: "checkbox", name: "draft" });
    const answer = h("div", { "data-testid": "policy-check-result" });
    const form = h(
      "form",
      {
        "data-testid": "policy-check",
        onsubmit: async (event) => {
          event.preventDefault();
          const body = { from: from.value.trim(), to: to.value.trim(), target: target.value.trim() };
          if (useDraft.checked) body.text = draft.value;
          try {
            const res = await post(meshPath(ctx.mesh, "policy", "check"), body);
            clear(answer, h("p", { class: `banner ${res.allowed ? "info" : "error"}` }, h("strong", {}, res.allowed ? "Allowed" : "Denied"), " — ", res.why));
          } catch (exc) {
            clear(answer, errorBanner(exc.message));
          }
        },
      },
      h("div", { class: "row" }, field("From", from), field("To", to), field("Target", target)),
      h("div", { class: "row" },
        h("label", { class: "field" }, h("span", {}, "Decide with"), h("span", {}, useDraft, " the draft instead of the policy in force")),
        h("div", { class: "field" }, h("button", { type: "submit" }, "Check"))),
      answer,
    );
    clear(checkBox, card("Would it be allowed?", form));
  }

  // ---- who may reach this endpoint ----
  async function drawLocal() {
    let local;
    try {
      local = await get(meshPath(ctx.mesh, "policy", "local"));
    } catch (exc) {
      if (!ctx.live()) return;
      const text = exc instanceof ApiError && exc.status === 404
        ? "Not available: this agent does not report the rules that apply to it."
        : exc.message;
      clear(localBox, card("Who may reach this endpoint", h("p", { class: "muted" }, text)));
      return;
    }
    if (!ctx.live()) return;
    const rules = local.rules_for_me || [];
    clear(
      localBox,
      card(
        "Who may reach this endpoint",
        !local.version
          ? h("p", { class: "muted" }, "No policy is set: each app's own lists decide.")
          : rules.length === 0
            ? h("p", {}, `No rule of version ${local.version} lets anyone reach this endpoint: everything is refused here.`)
            : h("ul", { class: "rules" }, rules.map(([line, rule]) => h("li", {}, h("span", { class: "muted mono" }, `line ${line}: `), h("span", { class: "mono" }, rule)))),
      ),
    );
  }

  // ---- history, rollback ----
  function drawHistory(versions) {
    const admin = isAdmin();
    clear(
      historyBox,
      card(
        "History",
        table(
          [
            { label: "Version", class: "num", cell: (v) => h("span", {}, String(v.version), v.version === policy.version ? h("span", { class: "muted small" }, " (in force)") : null) },
            { label: "Set by", cell: (v) => v.set_by },
            { label: "Set at", cell: (v) => when(v.set_at) },
            { label: "Lines", class: "num", cell: (v) => String(v.lines) },
            { label: "SHA-256", cell: (v) => h("span", { class: "mono small", title: v.sha256 }, String(v.sha256 || "").slice(0, 12)) },
            { label: "Note", cell: (v) => v.note || "" },
            {
              label: "",
              cell: (v) => h("div", { class: "actions" },
                h("button", { type: "button", class: "small", onclick: async (e) => {
                  const got = await act(e.currentTarget, () => get(`${meshPath(ctx.mesh, "policy")}?version=${v.version}`));
                  if (got) { viewing = got; drawCurrent(); window.scrollTo(0, 0); }
                } }, "View"),
                admin && v.version !== policy.version
                  ? h("button", { type: "button", class: "small danger", "data-testid": `rollback-${v.version}`, onclick: async (e) => {
                    if (!confirm(`Make the text of version ${v.version} the policy again (as a new version)? Its tests run first.`)) return;
                    const done = await act(e.currentTarget, () => post(meshPath(ctx.mesh, "policy", "rollback"), { version: v.version }),
                      (res) => `Rolled back: version ${v.version}'s text is now version ${res.version}`);
                    if (done) await refresh();
                  } }, "Roll back")
                  : null),
            },
          ],
          versions,
          { testid: "policy-history", empty: "No policy was ever set in this mesh." },
        ),
      ),
    );
  }

  async function refresh() {
    let versions;
    try {
      [policy, versions] = await Promise.all([get(meshPath(ctx.mesh, "policy")), get(meshPath(ctx.mesh, "policy", "history"))]);
    } catch (exc) {
      if (ctx.live()) clear(current, errorBanner(exc.message));
      return;
    }
    if (!ctx.live()) return;
    drawCurrent();
    drawHistory(versions);
    if (!draft.value && document.activeElement !== draft) draft.value = policy.text || EXAMPLE;
    if (isAdmin() !== drawnAsAdmin) { // redrawn only when it changes: a redraw would take the focus from the draft
      drawnAsAdmin = isAdmin();
      drawDraft();
    }
    await drawLocal();
  }

  let drawnAsAdmin = null;
  drawCheck();
  await refresh();
  ctx.every(5000, refresh); // a version set elsewhere; this endpoint gets a new one from its hub a moment later
}

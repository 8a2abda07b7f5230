// Treadle review console: live refresh, keyboard shortcuts, bulk selection, form checks,
// and one submission per form (a second click or key press never posts again).
// Plain JavaScript, no build step, no dependencies. Every page works without it.
(function () {
  "use strict";

  const body = document.body;
  const page = body.dataset.page;
  const pollMs = Math.max(200, parseInt(body.dataset.poll || "2000", 10));

  function typing(el) {
    if (!el) return false;
    const tag = el.tagName;
    if (tag === "TEXTAREA" || tag === "SELECT" || el.isContentEditable) return true;
    if (tag !== "INPUT") return false;
    return !["checkbox", "radio", "button", "submit"].includes(el.type);
  }

  // --- live refresh: fetch the region's URL, swap each [data-part] that changed ------------
  function liveRegions() {
    document.querySelectorAll("[data-live]").forEach(function (region) {
      const url = region.dataset.live;
      let busy = false;
      async function refresh() {
        if (busy || document.hidden) return;
        busy = true;
        try {
          const res = await fetch(url, { headers: { "X-Requested-With": "fetch" }, cache: "no-store" });
          if (!res.ok) return;
          const html = await res.text();
          const doc = new DOMParser().parseFromString(html, "text/html");
          doc.querySelectorAll("[data-part]").forEach(function (fresh) {
            const old = region.querySelector('[data-part="' + fresh.dataset.part + '"]');
            if (!old || old.innerHTML === fresh.innerHTML) return;
            swap(old, fresh);
          });
        } catch (err) {
          // Server restarting or network gone: try again next tick.
        } finally {
          busy = false;
        }
      }
      setInterval(refresh, pollMs);
      document.addEventListener("visibilitychange", refresh);
    });
  }

  function swap(old, fresh) {
    // Keep the selection, and focus, across the swap.
    const checked = new Set(
      Array.from(old.querySelectorAll('input[type="checkbox"]:checked')).map(function (c) {
        return c.value;
      })
    );
    const active = document.activeElement;
    const focusHref = active && old.contains(active) ? active.getAttribute("href") : null;
    const focusValue = active && old.contains(active) ? active.value : null;
    old.innerHTML = fresh.innerHTML;
    old.querySelectorAll('input[type="checkbox"][name="target"]').forEach(function (c) {
      c.checked = checked.has(c.value);
    });
    if (focusHref) {
      const el = old.querySelector('[href="' + CSS.escape(focusHref) + '"]');
      if (el) el.focus();
    } else if (focusValue) {
      const el = old.querySelector('input[value="' + CSS.escape(focusValue) + '"]');
      if (el) el.focus();
    }
    updateSelection();
  }

  // --- bulk selection -------------------------------------------------------------------
  function targets() {
    return Array.from(document.querySelectorAll('input[type="checkbox"][name="target"]'));
  }

  function updateSelection() {
    const count = targets().filter(function (c) { return c.checked; }).length;
    const all = document.getElementById("select-all");
    document.querySelectorAll(".sel-count").forEach(function (el) { el.textContent = String(count); });
    ["bulk-approve", "bulk-reject"].forEach(function (id) {
      const button = document.getElementById(id);
      if (button && !button.form.dataset.sent) button.disabled = count === 0;
    });
    if (all) {
      const n = targets().length;
      all.checked = n > 0 && count === n;
      all.indeterminate = count > 0 && count < n;
    }
  }

  document.addEventListener("change", function (ev) {
    const el = ev.target;
    if (el.id === "select-all") {
      targets().forEach(function (c) { c.checked = el.checked; });
    }
    if (el.id === "select-all" || el.name === "target") updateSelection();
  });

  // --- decision form: a reason before rejecting, Enter in a field does what it says -------
  function decideForm() {
    const form = document.getElementById("decide");
    if (!form) return;
    const reason = document.getElementById("reason");
    const feedback = document.getElementById("feedback");
    const rejectBtn = document.getElementById("reject-btn");
    const editBtn = document.getElementById("edit-btn");
    const approveBtn = document.getElementById("approve-btn");
    function needs(field, hint) {
      field.setAttribute("aria-invalid", "true");
      field.placeholder = hint;
      field.focus();
    }
    form.addEventListener("submit", function (ev) {
      const action = ev.submitter ? ev.submitter.value : "";
      if (action === "reject" && reason && !reason.value.trim()) {
        ev.preventDefault();
        needs(reason, "Say why before rejecting");
      } else if (action === "changes" && feedback && !feedback.value.trim()) {
        ev.preventDefault();
        needs(feedback, "Say what to change before sending it back");
      }
    });
    // Enter in an answer approves with the answers when there is one Approve button; with
    // choices, a choice must be clicked (the form's default button is disabled).
    const answers = document.getElementById("answers");
    if (answers) answers.addEventListener("keydown", function (ev) {
      const el = ev.target;
      if (ev.key !== "Enter" || el.tagName !== "INPUT" || el.type === "checkbox" || el.type === "radio") return;
      ev.preventDefault();
      if (approveBtn) approveBtn.click();
    });
    // Enter in the reason field rejects; in the note field, approves with edits.
    if (reason) reason.addEventListener("keydown", function (ev) {
      if (ev.key === "Enter") { ev.preventDefault(); rejectBtn.click(); }
    });
    const note = document.getElementById("note");
    if (note) note.addEventListener("keydown", function (ev) {
      if (ev.key === "Enter") { ev.preventDefault(); editBtn.click(); }
    });
    // Tab in the editor indents instead of leaving it.
    const editor = document.getElementById("artefact-edit");
    if (editor) editor.addEventListener("keydown", function (ev) {
      if (ev.key === "Tab" && !ev.shiftKey && !ev.ctrlKey && !ev.altKey) {
        ev.preventDefault();
        const s = editor.selectionStart;
        editor.setRangeText("  ", s, editor.selectionEnd, "end");
      }
    });
    const invalid = form.querySelector('[aria-invalid="true"]');
    if (invalid) invalid.focus();
  }

  // --- bulk form: one reason for every rejection ---------------------------------------
  function bulkForm() {
    const form = document.getElementById("bulk");
    if (!form) return;
    const reason = document.getElementById("bulk-reason");
    form.addEventListener("submit", function (ev) {
      const action = ev.submitter ? ev.submitter.value : "";
      if (action === "reject" && reason && !reason.value.trim()) {
        ev.preventDefault();
        reason.setAttribute("aria-invalid", "true");
        reason.placeholder = "Say why before rejecting (required)";
        reason.focus();
      }
    });
  }

  // --- one submission per form: the server also drops a repeated key (idem) -------------
  // Listens last (bubbling to the document), so a form's own check that refuses a
  // submission (a missing reason) runs first and leaves the form free to send again.
  document.addEventListener("submit", function (ev) {
    const form = ev.target;
    if (!(form instanceof HTMLFormElement) || form.method.toLowerCase() !== "post") return;
    if (ev.defaultPrevented) return;
    if (form.dataset.sent) { ev.preventDefault(); return; }
    form.dataset.sent = "1";
    form.setAttribute("aria-busy", "true");
    // Disabled after this event: the clicked button's name/value still goes with the form.
    setTimeout(function () {
      form.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
    }, 0);
  });

  // Back to a page from the history cache: its forms can be used again.
  window.addEventListener("pageshow", function (ev) {
    if (!ev.persisted) return;
    document.querySelectorAll("form[data-sent]").forEach(function (form) {
      delete form.dataset.sent;
      form.removeAttribute("aria-busy");
      form.querySelectorAll("button").forEach(function (b) { b.disabled = false; });
    });
    updateSelection();
  });

  // --- keyboard shortcuts ---------------------------------------------------------------
  function queueLinks() {
    return Array.from(document.querySelectorAll(".queue .item-link"));
  }

  function moveInQueue(step) {
    const links = queueLinks();
    if (!links.length) return;
    const at = links.indexOf(document.activeElement);
    const next = at === -1 ? (step > 0 ? 0 : links.length - 1) : Math.min(Math.max(at + step, 0), links.length - 1);
    links[next].focus();
  }

  function go(id) {
    const link = document.getElementById(id);
    if (link && link.href) window.location.assign(link.href);
  }

  document.addEventListener("keydown", function (ev) {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const help = document.getElementById("help");
    if (ev.key === "Escape" && typing(document.activeElement)) {
      document.activeElement.blur();
      return;
    }
    if (typing(document.activeElement)) return;
    if (ev.key === "?") {
      ev.preventDefault();
      if (help.open) help.close(); else help.showModal();
      return;
    }
    if (help && help.open) return;

    if (page === "overview") {
      if (ev.key === "/") {
        const search = document.getElementById("q");
        if (search) { ev.preventDefault(); search.focus(); search.select(); }
      } else if (ev.key === "j") { ev.preventDefault(); moveInQueue(1); }
      else if (ev.key === "k") { ev.preventDefault(); moveInQueue(-1); }
      else if (ev.key === "x") {
        const row = document.activeElement && document.activeElement.closest("tr");
        const box = row && row.querySelector('input[name="target"]');
        if (box) { ev.preventDefault(); box.checked = !box.checked; updateSelection(); }
      }
      return;
    }
    if (page === "review") {
      if (ev.key === "j") { ev.preventDefault(); go("next-review"); }
      else if (ev.key === "k") { ev.preventDefault(); go("prev-review"); }
      else if (ev.key === "a") {
        const btn = document.getElementById("approve-btn");
        if (btn) { ev.preventDefault(); btn.click(); }
      } else if (ev.key === "r") {
        const reason = document.getElementById("reason");
        if (reason) { ev.preventDefault(); reason.focus(); }
      } else if (ev.key === "c") {
        const feedback = document.getElementById("feedback");
        if (feedback) { ev.preventDefault(); feedback.focus(); }
      } else if (/^[1-9]$/.test(ev.key)) {
        // A choice's number approves with that choice (a second press: the form is sent).
        const btn = document.querySelector('#choices button[data-key="' + ev.key + '"]');
        if (btn) { ev.preventDefault(); btn.click(); }
      } else if (ev.key === "e") {
        const editor = document.getElementById("editor");
        if (editor) {
          ev.preventDefault();
          editor.open = true;
          document.getElementById("artefact-edit").focus();
        }
      }
    }
  });

  document.querySelectorAll("[data-help]").forEach(function (b) {
    b.addEventListener("click", function () { document.getElementById("help").showModal(); });
  });

  liveRegions();
  decideForm();
  bulkForm();
  updateSelection();
})();

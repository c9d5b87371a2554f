// Weir's web UI: keeps a page live and posts the changes its buttons ask for.
//
// A page with `data-live` on its body opens that server-sent-event stream;
// each event is a JSON object of section id -> HTML rendered by the server,
// swapped in place. Buttons with `data-url` post there (with the
// `x-weir-ui` header) after the person confirms `data-confirm`.
"use strict";

(function () {
  const toast = (text, failed) => {
    const box = document.getElementById("toast");
    if (!box) return;
    box.textContent = text;
    box.className = failed ? "shown failed" : "shown";
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { box.className = ""; }, 4000);
  };

  // What each section was last set to: one that did not change is left
  // alone (a button in it stays under the pointer).
  const shown = new Map();

  const connect = (url, tries = 0) => {
    const source = new EventSource(url);
    source.addEventListener("sections", (event) => {
      const sections = JSON.parse(event.data);
      for (const [id, html] of Object.entries(sections)) {
        const element = document.getElementById(id);
        if (element && shown.get(id) !== html) {
          element.innerHTML = html;
          shown.set(id, html);
        }
      }
      document.body.dataset.updated = String(Date.now());
    });
    source.addEventListener("open", () => { tries = 0; });
    source.addEventListener("error", () => {
      // The server went away or ended the stream (the pipeline is gone,
      // the token revoked): try again a few times, then say so.
      if (source.readyState !== EventSource.CLOSED) return;
      if (tries < 5) {
        setTimeout(() => connect(url, tries + 1), 3000 * (tries + 1));
      } else {
        toast("Live updates stopped: reload the page.", true);
      }
    });
  };

  const confirmThen = (question, then) => {
    const dialog = document.getElementById("confirm");
    if (!dialog || typeof dialog.showModal !== "function") {
      if (window.confirm(question)) then();
      return;
    }
    dialog.querySelector(".question").textContent = question;
    dialog.returnValue = "";
    dialog.addEventListener("close", function once() {
      dialog.removeEventListener("close", once);
      if (dialog.returnValue === "ok") then();
    });
    dialog.showModal();
  };

  const post = async (button) => {
    button.disabled = true;
    try {
      const response = await fetch(button.dataset.url, {
        method: "POST",
        headers: { "x-weir-ui": "1" },
        credentials: "same-origin",
      });
      const text = (await response.text()).trim();
      toast(response.ok ? text : `Refused: ${text}`, !response.ok);
    } catch (error) {
      toast(`The server did not answer: ${error}`, true);
    } finally {
      button.disabled = false;
    }
  };

  document.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-url]");
    if (!button) return;
    event.preventDefault();
    confirmThen(button.dataset.confirm || "Are you sure?", () => post(button));
  });

  document.addEventListener("DOMContentLoaded", () => {
    const live = document.body.dataset.live;
    if (live) connect(live);
  });
})();

// The console's entry point: tabs, the key prompt, and the panels (frames.js, video.js, streams.js, status.js).

import { apiKey, setApiKey } from "./api.js";
import { $ } from "./dom.js";
import { setupFrames } from "./frames.js";
import { setupStatus } from "./status.js";
import { setupStreams } from "./streams.js";
import { setupVideo } from "./video.js";

function setupTabs() {
  const tabs = [...document.querySelectorAll("[data-tab]")];
  for (const tab of tabs) {
    tab.addEventListener("click", () => {
      for (const other of tabs) {
        const chosen = other === tab;
        other.setAttribute("aria-selected", String(chosen));
        $(`#tab-${other.dataset.tab}`).hidden = !chosen;
      }
    });
  }
}

function setupAuth() {
  const form = $("#auth");
  const forget = $("#forget-key");
  forget.hidden = !apiKey();
  window.addEventListener("masenet:unauthorized", (event) => {
    $("#auth-reason").textContent = `${event.detail.replace(/^./, (first) => first.toUpperCase())}.`;
    if (form.hidden) {
      form.hidden = false;
      $("#auth-key").focus();
    }
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("#auth-key").value.trim();
    if (!key) return;
    form.hidden = true;
    $("#auth-key").value = "";
    forget.hidden = false;
    setApiKey(key);
  });
  forget.addEventListener("click", () => {
    forget.hidden = true;
    setApiKey("");
  });
}

setupTabs();
setupAuth();
setupFrames();
setupVideo();
setupStreams();
setupStatus();

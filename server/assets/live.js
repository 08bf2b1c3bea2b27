// Live updates for pages marked `data-live`: when the server says the fleet
// changed, fetch this page again and swap its main part in. Pages work
// without this file; it only saves a reload.
"use strict";
(function () {
  const main = document.getElementById("main");
  if (!main || !main.hasAttribute("data-live") || !window.EventSource) {
    return;
  }
  let fetching = false;
  async function refresh() {
    if (fetching) {
      return;
    }
    fetching = true;
    try {
      const res = await fetch(window.location.href, {
        credentials: "same-origin",
        headers: { Accept: "text/html" },
      });
      if (!res.ok) {
        return;
      }
      const doc = new DOMParser().parseFromString(await res.text(), "text/html");
      const fresh = doc.getElementById("main");
      const current = document.getElementById("main");
      if (fresh && current) {
        current.replaceWith(document.adoptNode(fresh));
      }
    } finally {
      fetching = false;
    }
  }
  const events = new EventSource("/events");
  events.addEventListener("changed", refresh);
})();

// broker-net dashboard: replaces the page's sections with those each server-sent event
// carries. Loads nothing from anywhere but this dashboard.
"use strict";
(function () {
  const live = () => document.getElementById("live");
  function say(text, on) {
    const mark = live();
    if (mark) {
      mark.textContent = text;
      mark.dataset.live = on ? "yes" : "no";
    }
  }
  const events = new EventSource("events" + window.location.search);
  events.onopen = () => say("live", true);
  events.onerror = () => {
    // Closed for good when the dashboard refused the stream (it restarted with a new token).
    const closed = events.readyState === EventSource.CLOSED;
    say(closed ? "disconnected: open the URL the dashboard printed" : "reconnecting…", false);
  };
  events.onmessage = (event) => {
    const changed = JSON.parse(event.data);
    for (const [id, html] of Object.entries(changed)) {
      const section = document.getElementById(id);
      if (section) section.innerHTML = html;
    }
    say("live · " + new Date().toLocaleTimeString(), true);
  };
})();

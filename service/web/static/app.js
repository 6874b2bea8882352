// AutoCore Monitor page: plain modern JS, no build step, no other host than the service.
// Data: the REST API for snapshots, /events (Server-Sent Events, read with fetch so that the
// Authorization and Last-Event-ID headers can be sent) for what changes.
//
// Panels subscribe to the stream with `on(kind, fn)` and to the clock with `onTick(fn)`: adding
// a panel (alerts, say) is a section in index.html, a module like panels.js, and one more entry in `panels`.

import { $, READ_TOKEN, askToken, stream, tickers } from "./core.js";
import { detail, fleet } from "./fleet.js";
import { dead, healthBar, live } from "./panels.js";

// ---- start -----------------------------------------------------------------------------------

const panels = [healthBar, fleet, detail, live, dead];

$("token-btn").addEventListener("click", async () => {
  if (await askToken("Read token (API_READ_TOKEN), if the service has one.", READ_TOKEN)) {
    stream.controller?.abort();
    fleet.load();
    dead.load();
  }
});
for (const panel of panels) panel.start();
setInterval(() => { for (const fn of tickers) fn(); }, 1000);
stream.connect();


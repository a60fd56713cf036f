"""`loopbus serve`: the bus live in a browser (stdlib :mod:`http.server`, 127.0.0.1 only).

Routes (all read the bus read-only, per request):

* ``/``: the live page; its script (``/app.js``, same origin) polls ``/api/state`` about once a
  second and adds what is new: events, runs, cursors;
* ``/api/state?since=ID``: JSON ``{head_id, events, runs, cursors}``: the events after ``ID``
  (the newest :data:`MAX_EVENTS`; ``since=0`` gives the latest ones), the newest runs and every
  consumer's cursor and lag;
* ``/report`` and ``/report?run=RUN``: the :mod:`loopbus.agents.observe.report` pages.

The server binds 127.0.0.1 only and answers only requests whose ``Host`` is a loopback name,
so a web page elsewhere cannot read the bus through DNS rebinding. The page builds the DOM
with ``textContent``, never HTML from the bus, and a Content-Security-Policy allows only
same-origin scripts.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger("loopbus.serve")

HOST = "127.0.0.1"
MAX_EVENTS = 200
MAX_RUNS = 50
_LOOPBACK_NAMES = {"127.0.0.1", "localhost", "[::1]"}

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>loopbus live</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 20px; color: #222; }
h1 { font-size: 19px; margin: 0 0 4px; } h2 { font-size: 15px; margin: 18px 0 6px; }
#status { color: #555; }
table { border-collapse: collapse; width: 100%; font-size: 12.5px; }
th, td { text-align: left; padding: 2px 8px; border-bottom: 1px solid #eee; vertical-align: top; }
th { background: #f5f5f5; }
td.nowrap { white-space: nowrap; }
td.payload { font: 12px ui-monospace, monospace; max-width: 640px; overflow-wrap: anywhere; }
.kind { display: inline-block; padding: 0 6px; border-radius: 3px; color: #fff; }
.done { background: #2ca02c; } .failed { background: #d62728; }
.budget_exceeded { background: #ff7f0e; } .max_turns { background: #9467bd; }
.running { background: #1f77b4; }
.grid { display: grid; grid-template-columns: 3fr 2fr; gap: 20px; }
tr.new { animation: flash 1.5s; } @keyframes flash { from { background: #fff3c4; } }
</style></head>
<body>
<h1>loopbus live</h1>
<p id="status">connecting…</p>
<div class="grid">
<div><h2>Events (newest first)</h2>
<table><thead><tr><th>id</th><th>time</th><th>agent</th><th>type</th><th>run</th>
<th>payload</th></tr></thead><tbody id="events"></tbody></table></div>
<div><h2>Runs</h2>
<table><thead><tr><th>run</th><th>agent</th><th>outcome</th><th>turns</th></tr></thead>
<tbody id="runs"></tbody></table>
<h2>Cursors</h2>
<table><thead><tr><th>consumer</th><th>last seen</th><th>lag</th><th>updated</th></tr></thead>
<tbody id="cursors"></tbody></table>
<p><a href="/report">chain report</a></p></div>
</div>
<script src="/app.js"></script>
</body></html>
"""

SCRIPT = r"""
"use strict";
let since = 0;
const MAX_ROWS = 500;
function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}
function link(td, href, text) {
  const a = document.createElement("a");
  a.href = href; a.textContent = text; td.textContent = ""; td.appendChild(a);
}
function showEvents(events) {
  const body = document.getElementById("events");
  for (const e of events) {
    const row = document.createElement("tr");
    row.className = "new event";
    row.dataset.id = e.id;
    cell(row, e.id); cell(row, e.created_at.replace("T", " "), "nowrap"); cell(row, e.agent);
    cell(row, e.event_type, "nowrap");
    const run = cell(row, e.run_id);
    if (e.run_id) link(run, "/report?run=" + encodeURIComponent(e.run_id), e.run_id);
    const text = JSON.stringify(e.payload);
    cell(row, text.length > 200 ? text.slice(0, 199) + "…" : text, "payload").title = text;
    body.insertBefore(row, body.firstChild);
  }
  while (body.rows.length > MAX_ROWS) body.deleteRow(body.rows.length - 1);
}
function showRuns(runs) {
  const body = document.getElementById("runs");
  body.textContent = "";
  for (const r of runs) {
    const row = document.createElement("tr");
    row.className = "run";
    const id = cell(row, r.run_id);
    link(id, "/report?run=" + encodeURIComponent(r.run_id), r.run_id);
    cell(row, r.agent);
    const kind = r.outcome || "running";
    const badge = document.createElement("span");
    badge.className = "kind " + kind.replace(/[^a-z_]/g, "");
    badge.textContent = kind;
    const td = cell(row, ""); td.appendChild(badge);
    cell(row, r.turns);
    body.appendChild(row);
  }
}
function showCursors(cursors) {
  const body = document.getElementById("cursors");
  body.textContent = "";
  for (const c of cursors) {
    const row = document.createElement("tr");
    row.className = "cursor";
    cell(row, c.consumer); cell(row, c.last_seen_id); cell(row, c.lag); cell(row, c.updated_at);
    body.appendChild(row);
  }
}
async function poll() {
  try {
    const response = await fetch("/api/state?since=" + since, {cache: "no-store"});
    const state = await response.json();
    if (!response.ok) throw new Error(state.error || response.statusText);
    showEvents(state.events);
    if (state.events.length) since = state.events[state.events.length - 1].id;
    showRuns(state.runs);
    showCursors(state.cursors);
    document.getElementById("status").textContent =
      "head id " + state.head_id + " · " + state.event_count + " events stored · updated " +
      new Date().toLocaleTimeString();
  } catch (err) {
    document.getElementById("status").textContent = "error: " + err.message;
  }
  setTimeout(poll, 1000);
}
poll();
"""

_CSP = "default-src 'self'; style-src 'self' 'unsafe-inline'"
_REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def state(bus_path: Any, since: int = 0) -> dict[str, Any]:
    """What ``/api/state`` answers: head id, new events, the newest runs, every cursor."""
    from loopbus.agents.observe.runs import list_runs
    from loopbus.bus.runs_queries import bus_summary, recent_events

    summary = bus_summary(bus_path)
    events = recent_events(bus_path, since_id=since, limit=MAX_EVENTS)
    return {
        "head_id": summary["head_id"],
        "event_count": summary["events"],
        "events": [
            {
                "id": e.id,
                "agent": e.agent,
                "event_type": e.event_type,
                "payload": e.payload,
                "run_id": e.run_id,
                "caused_by": e.caused_by,
                "created_at": e.created_at,
            }
            for e in events
        ],
        "runs": [r.to_dict() for r in list_runs(bus_path, limit=MAX_RUNS)],
        "cursors": summary["cursors"],
    }


class _Handler(BaseHTTPRequestHandler):
    server_version = "loopbus"

    @property
    def bus_server(self) -> BusServer:
        """The server of this request (the base class types ``self.server`` as BaseServer)."""
        server = self.server
        assert isinstance(server, BusServer)
        return server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: str, content_type: str, csp: str = _CSP) -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", f"{content_type}; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", csp)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(data)

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value, ensure_ascii=False), "application/json")

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        from loopbus.agents.errors import AgentError
        from loopbus.bus.errors import BusError

        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        if host not in _LOOPBACK_NAMES:
            self._json(HTTPStatus.FORBIDDEN, {"error": "only loopback host names are served"})
            return
        url = urlsplit(self.path)
        params = parse_qs(url.query)
        try:
            if url.path == "/":
                self._send(HTTPStatus.OK, PAGE, "text/html")
            elif url.path == "/app.js":
                self._send(HTTPStatus.OK, SCRIPT, "text/javascript")
            elif url.path == "/api/state":
                since = int((params.get("since") or ["0"])[0])
                self._json(HTTPStatus.OK, state(self.bus_server.bus_path, max(since, 0)))
            elif url.path == "/report":
                from loopbus.agents.observe.report import build_report

                run = (params.get("run") or [None])[0]
                page = build_report(self.bus_server.bus_path, run, limit=None if run else MAX_RUNS)
                self._send(HTTPStatus.OK, page, "text/html", _REPORT_CSP)
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no page {url.path}"})
        except ValueError:
            self._json(HTTPStatus.BAD_REQUEST, {"error": "since must be an event id"})
        except (AgentError, BusError) as exc:
            from loopbus.agents.observe.runs import RunNotFound

            status = HTTPStatus.NOT_FOUND if isinstance(exc, RunNotFound) else 500
            self._json(status, {"error": str(exc)})
        except Exception as exc:  # noqa: BLE001 - a bug must not leave the browser hanging
            log.exception("error serving %s", url.path)
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {exc!r}"})


class BusServer(ThreadingHTTPServer):
    """An HTTP server for one bus file, on 127.0.0.1."""

    daemon_threads = True

    def __init__(self, bus_path: Any, port: int = 0) -> None:
        self.bus_path = bus_path
        super().__init__((HOST, port), _Handler)


def make_server(bus_path: Any, *, port: int = 0) -> BusServer:
    """A server for ``bus_path`` on 127.0.0.1:``port`` (0: any free port), not started yet.

    Reads the bus once first, so a missing or foreign file fails here (BusError) rather than
    in the browser; a port in use raises :class:`~loopbus.agents.errors.AgentError`.
    """
    from loopbus.agents.errors import AgentError
    from loopbus.bus.runs_queries import bus_summary

    bus_summary(bus_path)
    try:
        return BusServer(bus_path, port)
    except OSError as exc:
        raise AgentError(f"cannot listen on {HOST}:{port}: {exc.strerror or exc}") from None

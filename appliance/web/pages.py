"""The status page's HTML: the login form and the summary (appliance.interfaces.Summary).

Plain HTML with one style sheet (served at /style.css, so the Content-Security-Policy can
forbid inline scripts and styles alike) and SVG plots made by appliance.web.charts; every value
that came from outside (addresses, reasons, names) is escaped here, once.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from html import escape

from appliance.interfaces import Summary
from appliance.units import age_text, size_text
from appliance.web.charts import line_chart
from appliance.web.history import History

STYLE = b"""
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 72em; color: #222; }
header { display: flex; justify-content: space-between; align-items: baseline; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .4em 0; }
th, td { text-align: left; padding: .2em .7em; border-bottom: 1px solid #ddd; vertical-align: top; }
td.n { text-align: right; }
.ok { color: #1a7f37; } .bad { color: #b42318; font-weight: bold; }
.attention { background: #fff4e5; border: 1px solid #e69f00; padding: .5em 1em; }
.message { background: #e7f3ff; border: 1px solid #0072b2; padding: .5em 1em; }
form.inline { display: inline; margin: 0; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
label { display: block; margin: .6em 0 .2em; }
input[type=text], input[type=password] { width: 20em; padding: .3em; }
button { margin: .1em; }
"""

ACTIONS = ("flush", "hold", "release", "delete")
PLOTS = (
    ("Mail", ("accepted", "delivered", "deferred", "bounced", "rejected")),
    ("Logins", ("logins", "login failures")),
)


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def page(title: str, body: str, user: str | None = None, csrf: str | None = None) -> bytes:
    """A whole page; with a user, the header names them and has the logout button."""
    who = ""
    if user is not None and csrf is not None:
        who = (
            f'<div>{_e(user)} <form class="inline" method="post" action="/logout">'
            f'<input type="hidden" name="csrf" value="{_e(csrf)}">'
            '<button type="submit">Log out</button></form></div>'
        )
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="stylesheet" href="/style.css"></head><body>'
        f"<header><h1>{_e(title)}</h1>{who}</header>{body}</body></html>\n"
    ).encode()


def login_page(hostname: str, token: str, error: str | None = None) -> bytes:
    problem = f'<p class="attention" role="alert">{_e(error)}</p>' if error else ""
    body = (
        f'{problem}<form method="post" action="/login">'
        f'<input type="hidden" name="csrf" value="{_e(token)}">'
        '<label for="user">Address</label>'
        '<input type="text" id="user" name="user" autocomplete="username" required autofocus>'
        '<label for="password">Password</label>'
        '<input type="password" id="password" name="password" '
        'autocomplete="current-password" required>'
        '<p><button type="submit">Log in</button></p></form>'
    )
    return page(f"{hostname}: log in", body)


def _queue_form(csrf: str, queue_id: str, actions: tuple[str, ...]) -> str:
    buttons = "".join(
        f'<button type="submit" name="action" value="{a}">{a}</button>' for a in actions
    )
    return (
        f'<form class="inline" method="post" action="/queue">'
        f'<input type="hidden" name="csrf" value="{_e(csrf)}">'
        f'<input type="hidden" name="queue_id" value="{_e(queue_id)}">{buttons}</form>'
    )


def _queue_rows(s: Summary, csrf: str, limit: int = 100) -> str:
    rows = []
    for m in s.queue[:limit]:
        actions: tuple[str, ...] = ("release", "delete") if m.held else ("flush", "hold", "delete")
        state = "held" if m.held else ("active" if m.where == "incoming" else "deferred")
        rows.append(
            f"<tr><td><code>{_e(m.queue_id)}</code></td><td>{state}</td>"
            f'<td class="n">{age_text(s.now - m.arrival)}</td>'
            f'<td class="n">{size_text(m.size)}</td><td>{_e(m.sender or "MAILER-DAEMON")}</td>'
            f"<td>{_e(', '.join(m.recipients))}</td><td>{_e(m.last_error or '')}</td>"
            f"<td>{_queue_form(csrf, m.queue_id, actions)}</td></tr>"
        )
    more = f"<p>and {len(s.queue) - limit} more</p>" if len(s.queue) > limit else ""
    return (
        "<table><tr><th>id</th><th>state</th><th>age</th><th>size</th><th>from</th><th>to</th>"
        "<th>last reason</th><th></th></tr>" + "".join(rows) + "</table>" + more
    )


def _queue(s: Summary, csrf: str) -> str:
    out = [
        '<h2 id="queue">Queue</h2>',
        f"<p>{len(s.active)} active, {len(s.deferred)} deferred, {len(s.held)} held",
    ]
    if s.deferred:
        out.append(
            f"; the oldest deferred message is {age_text(s.now - s.deferred[0].arrival)} old"
        )
    out.append("</p>")
    if s.deferred:
        reasons = Counter(m.last_error or "not tried yet" for m in s.deferred)
        out.append("<table><tr><th>deferred</th><th>reason</th></tr>")
        out.extend(
            f'<tr><td class="n">{n}</td><td>{_e(r)}</td></tr>' for r, n in reasons.most_common(5)
        )
        out.append("</table>")
    if s.queue:
        out.append(_queue_rows(s, csrf))
        out.append(f"<p>Every message: {_queue_form(csrf, 'ALL', ACTIONS)}</p>")
    return "".join(out)


def _services(s: Summary) -> str:
    rows = "".join(
        f"<tr><td>{_e(svc.name)}</td>"
        f'<td class="{"ok" if svc.running else "bad"}">{"up" if svc.running else "DOWN"}</td>'
        f"<td>{_e(', '.join(svc.listeners) or '-')}</td></tr>"
        for svc in s.services
    )
    up = age_text(s.now - s.started) if s.started else "?"
    return (
        f'<h2 id="services">Services</h2><p>pid {_e(s.pid)}, up {up}</p>'
        f"<table><tr><th>service</th><th>state</th><th>listeners</th></tr>{rows}</table>"
    )


def _plots(history: History) -> str:
    out = ['<h2 id="traffic">Traffic</h2><div class="plots">']
    for title, names in PLOTS:
        out.append(
            line_chart(
                f"{title}, last hour, per minute",
                [(n, history.last(n, 60)) for n in names],
                "an hour ago",
            )
        )
        out.append(
            line_chart(
                f"{title}, last day, per 15 minutes",
                [(n, history.last(n, 1440, 15)) for n in names],
                "a day ago",
            )
        )
    out.append("</div>")
    return "".join(out)


def _certificate(s: Summary) -> str:
    c = s.certificate
    if c.expires is None:
        return f'<h2 id="certificate">Certificate</h2><p class="bad">{_e(c.problem)}</p>'
    expires = datetime.fromtimestamp(c.expires, UTC)
    days = (c.expires - s.now) / 86400
    state = (
        f'<span class="bad">{_e(c.problem)}</span>' if c.problem else '<span class="ok">ok</span>'
    )
    rows = "".join(
        f"<tr><td>{_e(n)}</td><td>{expires:%Y-%m-%d %H:%M} UTC</td><td>{days:.0f} days</td></tr>"
        for n in c.names
    )
    return (
        f'<h2 id="certificate">Certificate</h2><p>{_e(c.path)}: {state}</p>'
        f"<table><tr><th>name</th><th>expires</th><th>in</th></tr>{rows}</table>"
    )


def _dns(s: Summary) -> str:
    out = ['<h2 id="dns">DNS records</h2>']
    for d in s.dns:
        ok = sum(r.state == "ok" for r in d.records)
        out.append(f"<p>{_e(d.domain)}: {ok} of {len(d.records)} records as needed</p>")
        out.append("<table><tr><th>name</th><th>type</th><th>needed</th><th>state</th></tr>")
        out.extend(
            f"<tr><td>{_e(r.name)}</td><td>{_e(r.type)}</td><td><code>{_e(r.value)}</code></td>"
            f'<td class="{"ok" if r.state == "ok" else "bad"}">{_e(r.state)}</td></tr>'
            for r in d.records
        )
        out.append("</table>")
    return "".join(out)


def _mailboxes(s: Summary) -> str:
    rows = "".join(
        f'<tr><td>{_e(m.address)}</td><td class="n">{m.messages}</td>'
        f'<td class="n">{size_text(m.octets)}</td></tr>'
        for m in s.mailboxes
    )
    return (
        '<h2 id="mailboxes">Mailboxes</h2>'
        f"<table><tr><th>address</th><th>messages</th><th>size</th></tr>{rows}</table>"
    )


def status_page(
    hostname: str, s: Summary, history: History, user: str, csrf: str, message: str | None
) -> bytes:
    parts = []
    if message:
        parts.append(f'<p class="message" role="status">{_e(message)}</p>')
    if s.attention:
        items = "".join(f"<li>{_e(a)}</li>" for a in s.attention)
        parts.append(
            f'<div class="attention" role="alert"><b>Needs attention</b><ul>{items}</ul></div>'
        )
    else:
        parts.append('<p class="ok">All well.</p>')
    parts += [_services(s), _queue(s, csrf), _plots(history), _certificate(s), _dns(s)]
    parts.append(_mailboxes(s))
    return page(f"{hostname} status", "".join(parts), user, csrf)

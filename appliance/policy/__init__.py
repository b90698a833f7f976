"""SMTP policy from Sendmail's files: local-host-names, access, virtusertable, aliases.

The files keep Sendmail's source syntax (what `makemap` and `newaliases` read), so the tutorial's
files work unchanged; each parser's module says where we are stricter or differ:

- `mapfile`: what the files share (comments, quoting, addresses, `ERROR:` replies);
- `local_host_names`, `access`, `virtusertable`, `aliases`: one parser and map each;
- `expansion`: where a local address goes (virtusertable, then aliases; loop and depth limits);
- `sendmail`: `SendmailPolicy`, the `appliance.interfaces.Policy` SMTP asks, built on the four
  files, each a `WatchedFile` re-read when it changes.

API::

    policy = SendmailPolicy(local_domains=[...], local_host_names=Path | None, access=Path | None,
                            virtusertable=Path | None, aliases=Path | None, users=UserDirectory,
                            clock=time.monotonic)    # ConfigError listing every problem at start-up
    policy.is_local_domain(domain) -> bool
    policy.local_domains() -> frozenset[str]
    policy.check_connect(ip, hostname) -> Verdict                         # on connect
    policy.check_sender(address, ip, hostname, auth_user) -> Deferred[Verdict]          # MAIL
    policy.resolve_recipient(address, ip, hostname, auth_user, client_relay)
        -> Deferred[Resolution]                                                         # RCPT

A `Resolution`'s `forward_to` holds the remote addresses to relay to. For a plain relayed
recipient that is the address itself; for a local address that virtusertable or aliases send
elsewhere it is the rewritten target(s), which are *not* the RCPT address.

Each file is re-read when its (mtime_ns, size, inode) changes, checked at most once a second on
lookup. A file that fails to parse on reload keeps the previous content and logs each problem.
"""

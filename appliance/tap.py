"""twistd entry point: `twistd -n mailappliance --config FILE`.

Configuration problems are printed one per line and twistd exits 1. We print and exit ourselves
instead of raising UsageError, because twistd would print its whole option help above them.
"""

from __future__ import annotations

import sys

from twisted.python import usage

from appliance import config as config_mod
from appliance.errors import ConfigError
from appliance.service import Prepared, make_service, prepare


class Options(usage.Options):
    synopsis = "--config FILE"
    longdesc = "Serve DNS, SMTP, POP3, IMAP and the web status page from one INI file."
    optParameters = [["config", "c", None, "the appliance's INI file (required)"]]

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config FILE is required")
        try:
            cfg = config_mod.load(self["config"])
            self.prepared: Prepared = prepare(cfg, progress=lambda line: print(line, flush=True))
        except ConfigError as e:
            sys.stderr.write(f"mailappliance: cannot start, {self['config']} has problems:\n")
            for problem in e.problems:
                sys.stderr.write(f"  {problem}\n")
            sys.stderr.flush()
            raise SystemExit(1) from None
        parent = getattr(self, "parent", None)
        if parent is not None and parent.get("pidfile") == "twistd.pid":
            # twistd's default pid file sits in the cwd, so the second lab appliance started
            # from the same folder would refuse to run: keep it in our own state folder
            parent["pidfile"] = str(cfg.appliance.state_dir / "twistd.pid")


def makeService(options: Options):  # noqa: N802 (twistd's API)
    return make_service(options.prepared)

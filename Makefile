# make run   - create .venv, install, run the appliance for mail.163.com in the foreground
# make lab   - both lab appliances (163 and sina) in the foreground, output prefixed 163| sina|
# make test  - create .venv, install test deps and the Debian tools the tests use, run the suite
# make compliance - Dovecot's imaptest suite against the appliance's IMAP
# make bench - every speed comparison beside Postfix, Dovecot and BIND in one go (bench/all.py);
#              BENCH_ARGS=--quick for a smoke test of the harness; see bench/all.py --help
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= etc/163.ini
DEBIAN_PKGS := bind9-dnsutils bind9 openssl dnsperf procps iproute2 slapd ldap-utils swaks libnet-ssleay-perl postfix fetchmail mpop curl clamav-daemon spamassassin spamd spamc chromium chromium-driver
STAMP := $(VENV)/.installed

.PHONY: run lab test compliance bench venv debs lint typecheck clean

$(STAMP): setup.cfg
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# compat mode keeps twisted/plugins on sys.path so that twistd finds the plugin
	$(BIN)/pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

venv: $(STAMP)

run: venv
	$(BIN)/twistd -n mailappliance --config $(CONFIG)

# both tutorial hosts, 163 on 127.0.1.1 and sina on 127.0.1.4, on their real ports; Ctrl-C stops both
lab: venv
	@if [ "$$(id -u)" != 0 ]; then echo "make lab binds ports 25, 53, 80, 110, 143, 443, 465, 587, 993 and 995: run it as root" >&2; exit 1; fi
	$(BIN)/python -m appliance.lab

# Debian packages the tests drive (dig, named-checkzone, openssl, dnsperf, slapd, Postfix, clamd,
# spamd). policy-rc.d
# keeps packaged daemons (named) from starting system-wide; fixtures start their own.
debs:
	@missing=""; for p in $(DEBIAN_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "need root to install:$$missing" >&2; exit 1; fi; \
	  created=0; if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; created=1; fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $$missing >/dev/null || exit 1; \
	  [ $$created = 1 ] && rm -f /usr/sbin/policy-rc.d; true; \
	fi

test: debs venv
	$(BIN)/ruff check appliance tests bench twisted
	$(BIN)/ruff format --check appliance tests bench twisted
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/pytest -q

# Dovecot's imaptest compliance suite (../shared/peer/imaptest, built on first use) against the
# lab appliance's IMAP; exits non-zero unless the base protocol has <= 5% failing commands and
# no advertised extension fails
compliance: debs venv
	$(BIN)/python bench/imap_compliance.py

BENCH_ARGS ?=
BENCH_STAMP := $(VENV)/.bench-installed
ANCHOR_TOOLS := smtp-source postfix dovecot doveconf named named-checkzone dnsperf dig

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[test,bench]' --config-settings editable_mode=compat
	touch $(BENCH_STAMP)

# the anchors (private Postfix, Dovecot, BIND on loopback) come from ../shared/bench/setup.sh
bench: debs $(BENCH_STAMP)
	@if [ "$$(id -u)" != 0 ]; then echo "make bench starts private Postfix, Dovecot and BIND instances: run it as root" >&2; exit 1; fi
	@missing=""; for t in $(ANCHOR_TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	[ -e /usr/lib/dovecot/imap ] || missing="$$missing dovecot-imapd"; \
	if [ -n "$$missing" ]; then echo "anchors missing:$$missing; running ../shared/bench/setup.sh" >&2; ../shared/bench/setup.sh || exit 1; fi
	$(BIN)/python bench/all.py $(BENCH_ARGS)

typecheck: venv
	$(BIN)/lint-imports
	$(BIN)/mypy

lint: venv
	$(BIN)/ruff check --fix appliance tests bench twisted
	$(BIN)/ruff format appliance tests bench twisted

clean:
	rm -rf $(VENV) var .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +

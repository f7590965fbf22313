# mpchat: build, test, run and install.  GNU make.
#
#   make              release build of mpchatd, mpchat and mpchat-bench
#                     (cargo build --release --locked)
#   make test         cargo fmt --check and clippy, every cargo test, the man page
#                     lint, then make demo
#   make run          release build of mpchatd and mpchat, then the server on
#                     0.0.0.0:5150 with its state in ./state
#   make demo         a scripted three-person chat on a free loopback port (debug build)
#   make fuzz         the mutation fuzzer over every parser, 1,000,000 cases
#   make perf         measurements (frame rate, login cost, latency, memory, durability)
#   make bench        mpchat-bench --quick: mpchatd against ngIRCd and a plaintext relay
#   make install      copy the built binaries, the man pages and the systemd unit;
#                     never builds
#   make uninstall    remove what install copied
#
# mpchatd goes to SBINDIR, like sshd: it is a daemon and an administrator's tool
# (mpchatd useradd), not something users run.  mpchat and mpchat-bench go to BINDIR
# (mpchat-bench finds the installed mpchatd in ../sbin beside it).  The systemd
# unit goes to SYSTEMDDIR, by default $(PREFIX)/lib/systemd/system, which systemd
# reads for PREFIX=/usr/local and PREFIX=/usr alike; its ExecStart= is given the
# installed path of mpchatd (SBINDIR, without DESTDIR).
#
# install does not build, so `sudo make install` after `make` leaves no root-owned
# files in target/.  Stage an install without root with `make install DESTDIR=/tmp/stage`.

PREFIX  ?= /usr/local
BINDIR  ?= $(PREFIX)/bin
SBINDIR ?= $(PREFIX)/sbin
MANDIR  ?= $(PREFIX)/share/man
SYSTEMDDIR ?= $(PREFIX)/lib/systemd/system
DESTDIR ?=

CARGO   ?= cargo
INSTALL ?= install

# Where cargo puts its binaries; follows CARGO_TARGET_DIR when it is set.  install
# copies from RELEASE_DIR (tests/install.rs points it at the debug build); demo runs
# DEBUG_DIR's.
TARGET_DIR  ?= $(if $(CARGO_TARGET_DIR),$(CARGO_TARGET_DIR),target)
RELEASE_DIR ?= $(TARGET_DIR)/release
DEBUG_DIR   ?= $(TARGET_DIR)/debug

# make run: the state directory inside the checkout (ignored by git) and the address.
RUN_STATE_DIR ?= $(CURDIR)/state
RUN_LISTEN    ?= 0.0.0.0:5150

MAN8 = man/mpchatd.8
MAN1 = man/mpchat.1
MAN7 = man/mpchat-protocol.7
MANBENCH = man/mpchat-bench.1
UNIT = bin/mpchatd.service

.PHONY: all test lint run demo fuzz perf bench install uninstall clean lint-man

all:
	$(CARGO) build --release --locked

test: lint
	$(CARGO) test --locked
	@$(MAKE) --no-print-directory lint-man
	@$(MAKE) --no-print-directory demo

# Builds both binaries, so the README's "Try it on one machine" finds
# target/release/mpchat next to mpchatd.
run:
	$(CARGO) build --release --locked --bin mpchatd --bin mpchat
	'$(RELEASE_DIR)/mpchatd' --state-dir '$(RUN_STATE_DIR)' --listen $(RUN_LISTEN)

# The debug build: quick to make, and the one cargo test has built already.
demo:
	$(CARGO) build --locked
	@bash tests/demo.sh '$(DEBUG_DIR)'

# make test runs a quick sample of the fuzzer; this runs a million cases. Another
# deterministic sequence: make fuzz FUZZ_SEED=N.
FUZZ_CASES ?= 1000000
FUZZ_SEED  ?= 120329471549812
fuzz:
	MPCHAT_FUZZ_CASES=$(FUZZ_CASES) MPCHAT_FUZZ_SEED=$(FUZZ_SEED) $(CARGO) test --locked --test fuzz -- --nocapture

# The baseline ngIRCd comes from Debian (installed here when apt-get can; otherwise
# the bench says it skips that baseline). A short run, under three minutes.
NGIRCD ?= /usr/sbin/ngircd
bench:
	$(CARGO) build --release --locked
	@if [ ! -x '$(NGIRCD)' ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" -eq 0 ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ngircd >/dev/null 2>&1 || \
		echo "make bench: could not install ngircd; its baseline is skipped" >&2; \
	fi
	@if [ -x '$(NGIRCD)' ]; then set -x; '$(RELEASE_DIR)/mpchat-bench' --quick --ngircd '$(NGIRCD)'; \
	else echo "make bench: no ngircd at $(NGIRCD): skipping that baseline" >&2; \
		set -x; '$(RELEASE_DIR)/mpchat-bench' --quick --no-ngircd; fi

# Figures, never assertions: printed, for the README and the issue notes.
perf:
	$(CARGO) test --release --locked --test perf -- --ignored --nocapture --test-threads 1

# Formatting and lints are part of the test: a tree that does not pass them does not land.
lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

lint-man:
	@sh tests/man_lint.sh $(MAN8) $(MAN1) $(MAN7) $(MANBENCH)

install:
	@for f in '$(RELEASE_DIR)/mpchatd' '$(RELEASE_DIR)/mpchat' '$(RELEASE_DIR)/mpchat-bench'; do \
		if [ ! -x "$$f" ]; then \
			echo "make install: $$f is missing: run make first (as yourself, not as root), then make install" >&2; \
			exit 1; \
		fi; \
	done
	$(INSTALL) -d -m 755 '$(DESTDIR)$(SBINDIR)' '$(DESTDIR)$(BINDIR)'
	$(INSTALL) -d -m 755 '$(DESTDIR)$(MANDIR)/man8' '$(DESTDIR)$(MANDIR)/man1' '$(DESTDIR)$(MANDIR)/man7'
	$(INSTALL) -d -m 755 '$(DESTDIR)$(SYSTEMDDIR)'
	$(INSTALL) -m 755 '$(RELEASE_DIR)/mpchatd' '$(DESTDIR)$(SBINDIR)/mpchatd'
	$(INSTALL) -m 755 '$(RELEASE_DIR)/mpchat' '$(DESTDIR)$(BINDIR)/mpchat'
	$(INSTALL) -m 755 '$(RELEASE_DIR)/mpchat-bench' '$(DESTDIR)$(BINDIR)/mpchat-bench'
	$(INSTALL) -m 644 $(MAN8) '$(DESTDIR)$(MANDIR)/man8/mpchatd.8'
	$(INSTALL) -m 644 $(MAN1) '$(DESTDIR)$(MANDIR)/man1/mpchat.1'
	$(INSTALL) -m 644 $(MANBENCH) '$(DESTDIR)$(MANDIR)/man1/mpchat-bench.1'
	$(INSTALL) -m 644 $(MAN7) '$(DESTDIR)$(MANDIR)/man7/mpchat-protocol.7'
	@echo "sed 's|@SBINDIR@|$(SBINDIR)|g' $(UNIT) | install -m 644 to $(DESTDIR)$(SYSTEMDDIR)/mpchatd.service"
	@tmp=$$(mktemp) && \
	sed 's|@SBINDIR@|$(SBINDIR)|g' $(UNIT) >"$$tmp" && \
	$(INSTALL) -m 644 "$$tmp" '$(DESTDIR)$(SYSTEMDDIR)/mpchatd.service'; \
	status=$$?; rm -f "$$tmp"; exit $$status

uninstall:
	rm -f '$(DESTDIR)$(SBINDIR)/mpchatd' '$(DESTDIR)$(BINDIR)/mpchat' \
		'$(DESTDIR)$(BINDIR)/mpchat-bench'
	rm -f '$(DESTDIR)$(MANDIR)/man8/mpchatd.8' '$(DESTDIR)$(MANDIR)/man1/mpchat.1' \
		'$(DESTDIR)$(MANDIR)/man1/mpchat-bench.1' '$(DESTDIR)$(MANDIR)/man7/mpchat-protocol.7'
	rm -f '$(DESTDIR)$(SYSTEMDDIR)/mpchatd.service'

# Leaves ./state alone: it holds the accounts and the server key of `make run`.
clean:
	$(CARGO) clean

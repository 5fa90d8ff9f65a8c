# make deb                                   — the Debian package: mailroute_VERSION_ARCH.deb
# sudo make install PREFIX=/usr              — other distributions: installs and sets owners and modes
# make install PREFIX=/usr DESTDIR=/tmp/pkg  — staging for another packager (no owners set)
VERSION ?= 0.1.0
PREFIX ?= /usr/local
DESTDIR ?=
SYSCONFDIR ?= /etc
UNITDIR ?= $(PREFIX)/lib/systemd/system

# Release builds live in their own scratch path (a debug build in .build must not hold them up),
# and link the Swift runtime statically: the binaries need no Swift toolchain where they run.
SWIFT_RELEASE = swift build -c release --static-swift-stdlib --disable-local-rpath --scratch-path .build-release
CONFDIR = $(SYSCONFDIR)/mailroute
BUILT = .build-release/release
# `sudo make install` often runs without the toolchain on PATH: it then installs what
# `make build` left instead of building.
SWIFT := $(shell command -v swift 2>/dev/null)
DEB = mailroute_$(VERSION)_$(shell dpkg --print-architecture 2>/dev/null).deb

.PHONY: build built install install-files uninstall deb deb-name test

build:
	$(SWIFT_RELEASE) --product mailrouted
	$(SWIFT_RELEASE) --product mailroutectl

built:
	@[ -x $(BUILT)/mailrouted ] && [ -x $(BUILT)/mailroutectl ] || \
		{ echo "no release build in $(BUILT) and no swift on PATH: run make build first" >&2; exit 1; }

test:
	scripts/install-deps && scripts/test

# Files only, owned by whoever runs this: right for DESTDIR staging, where the mailroute group
# may not exist. Binaries are stripped (debug info is two fifths of their size).
install-files: $(if $(SWIFT),build,built)
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(UNITDIR) $(DESTDIR)$(PREFIX)/lib/sysusers.d \
		$(DESTDIR)$(PREFIX)/lib/tmpfiles.d $(DESTDIR)$(PREFIX)/share/doc/mailroute
	install -d -m 0750 $(DESTDIR)$(CONFDIR)
	install -m 0755 -s $(BUILT)/mailrouted $(DESTDIR)$(PREFIX)/bin/mailrouted
	install -m 0755 -s $(BUILT)/mailroutectl $(DESTDIR)$(PREFIX)/bin/mailroutectl
	sed 's|/usr/bin/mailrouted|$(PREFIX)/bin/mailrouted|; s|/etc/mailroute|$(CONFDIR)|g' \
		systemd/mailroute.service > $(DESTDIR)$(UNITDIR)/mailroute.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/mailroute.service
	install -m 0644 systemd/mailroute.sysusers $(DESTDIR)$(PREFIX)/lib/sysusers.d/mailroute.conf
	sed 's|/etc/mailroute|$(CONFDIR)|g' systemd/mailroute.tmpfiles > $(DESTDIR)$(PREFIX)/lib/tmpfiles.d/mailroute.conf
	chmod 0644 $(DESTDIR)$(PREFIX)/lib/tmpfiles.d/mailroute.conf
	install -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/mailroute/README.md
	# Never overwrite an operator's configuration.
	[ -e $(DESTDIR)$(CONFDIR)/mailroute.toml ] || \
		{ sed 's|/etc/mailroute|$(CONFDIR)|g' etc/mailroute.toml > $(DESTDIR)$(CONFDIR)/mailroute.toml.new && \
		chmod 0640 $(DESTDIR)$(CONFDIR)/mailroute.toml.new && \
		mv $(DESTDIR)$(CONFDIR)/mailroute.toml.new $(DESTDIR)$(CONFDIR)/mailroute.toml; }

# Into the running system (DESTDIR empty) as root, also the user, group, owners, modes and key,
# from the installed sysusers.d and tmpfiles.d files: what the Debian package's postinst does.
# Anything else gets a note of what is left to do.
install: install-files
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" -eq 0 ]; then \
		. packaging/mailroute-setup.sh && mailroute_setup $(PREFIX)/lib/sysusers.d/mailroute.conf \
			$(PREFIX)/lib/tmpfiles.d/mailroute.conf $(PREFIX)/bin/mailroutectl $(CONFDIR)/mailroute.key; \
	else \
		echo "make install: owners not set (DESTDIR given or not root). On the target system, as root:"; \
		echo "  systemd-sysusers $(PREFIX)/lib/sysusers.d/mailroute.conf"; \
		echo "  systemd-tmpfiles --create $(PREFIX)/lib/tmpfiles.d/mailroute.conf"; \
		echo "  mailroutectl key generate --output $(CONFDIR)/mailroute.key"; \
	fi

# The installed files; like `apt-get remove`, the configuration, the keys and the queue
# (/etc/mailroute, /var/lib/mailroute) and the mailroute user stay.
uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/mailrouted $(DESTDIR)$(PREFIX)/bin/mailroutectl $(DESTDIR)$(UNITDIR)/mailroute.service \
		$(DESTDIR)$(PREFIX)/lib/sysusers.d/mailroute.conf $(DESTDIR)$(PREFIX)/lib/tmpfiles.d/mailroute.conf
	rm -rf $(DESTDIR)$(PREFIX)/share/doc/mailroute

deb: build
	rm -rf .build-release/deb
	$(MAKE) --no-print-directory install-files DESTDIR="$(CURDIR)/.build-release/deb/root" \
		PREFIX=/usr SYSCONFDIR=/etc UNITDIR=/lib/systemd/system
	scripts/build-deb .build-release/deb/root $(VERSION) $(DEB)

deb-name:
	@echo $(DEB)

# make install PREFIX=/usr DESTDIR=/tmp/pkg   — what a distribution package would do.
PREFIX ?= /usr/local
DESTDIR ?=
SYSCONFDIR ?= /etc
UNITDIR ?= $(PREFIX)/lib/systemd/system

.PHONY: build install test

build:
	swift build -c release --product mailrouted
	swift build -c release --product mailroutectl

test:
	scripts/install-deps && swift test

install: build
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(UNITDIR) $(DESTDIR)$(PREFIX)/lib/sysusers.d \
		$(DESTDIR)$(PREFIX)/lib/tmpfiles.d $(DESTDIR)$(SYSCONFDIR)/mailroute $(DESTDIR)$(PREFIX)/share/doc/mailroute
	install -m 0755 "$$(swift build -c release --show-bin-path)/mailrouted" $(DESTDIR)$(PREFIX)/bin/mailrouted
	install -m 0755 "$$(swift build -c release --show-bin-path)/mailroutectl" $(DESTDIR)$(PREFIX)/bin/mailroutectl
	sed 's|/usr/bin/mailrouted|$(PREFIX)/bin/mailrouted|; s|/etc/mailroute|$(SYSCONFDIR)/mailroute|g' \
		systemd/mailroute.service > $(DESTDIR)$(UNITDIR)/mailroute.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/mailroute.service
	install -m 0644 systemd/mailroute.sysusers $(DESTDIR)$(PREFIX)/lib/sysusers.d/mailroute.conf
	install -m 0644 systemd/mailroute.tmpfiles $(DESTDIR)$(PREFIX)/lib/tmpfiles.d/mailroute.conf
	install -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/mailroute/README.md
	# Never overwrite an operator's configuration.
	[ -e $(DESTDIR)$(SYSCONFDIR)/mailroute/mailroute.toml ] || \
		install -m 0640 etc/mailroute.toml $(DESTDIR)$(SYSCONFDIR)/mailroute/mailroute.toml

import GRDB

/// The queue schema. A shipped migration is never edited: later changes are new migrations.
///
/// CHECK constraints are named with the sentence SQLite prints when they fail
/// ("CHECK constraint failed: rcpt_to must be …"), so an enqueuer's error names the column.
/// Rules that need a subquery (elements of a JSON value) are BEFORE INSERT triggers that
/// RAISE with the same kind of sentence.
enum Migrations {
    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1-schema") { db in
            try db.execute(sql: v1)
        }
        migrator.registerMigration("v2-claim-order") { db in
            try db.execute(sql: v2)
        }
        migrator.registerMigration("v3-enqueuer-contract") { db in
            try db.execute(sql: v3)
        }
        migrator.registerMigration("v4-due-admission-routing-version") { db in
            try db.execute(sql: v4)
        }
        migrator.registerMigration("v5-ready-and-waiting") { db in
            try db.execute(sql: v5)
        }
        migrator.registerMigration("v6-message-trace") { db in
            try db.execute(sql: v6)
        }
        return migrator
    }

    static let v1 = """
        CREATE TABLE smtp_configs (
            id INTEGER PRIMARY KEY,
            tenant TEXT NOT NULL
                CONSTRAINT "tenant must be 1-255 characters without / or control characters"
                CHECK (length(tenant) BETWEEN 1 AND 255 AND instr(tenant, '/') = 0
                       AND tenant NOT GLOB '*[' || char(1) || '-' || char(31) || ']*'),
            name TEXT NOT NULL
                CONSTRAINT "name must be 1-255 characters without / or control characters"
                CHECK (length(name) BETWEEN 1 AND 255 AND instr(name, '/') = 0
                       AND name NOT GLOB '*[' || char(1) || '-' || char(31) || ']*'),
            host TEXT NOT NULL CONSTRAINT "host must be 1-253 characters" CHECK (length(host) BETWEEN 1 AND 253),
            port INTEGER NOT NULL DEFAULT 587 CONSTRAINT "port must be 1-65535" CHECK (port BETWEEN 1 AND 65535),
            security TEXT NOT NULL DEFAULT 'starttls'
                CONSTRAINT "security must be starttls, tls or none" CHECK (security IN ('starttls', 'tls', 'none')),
            username TEXT CONSTRAINT "username must be at most 255 characters" CHECK (length(username) <= 255),
            -- AES-GCM sealed box (nonce | ciphertext | tag); the clear password is never stored.
            password_sealed BLOB,
            from_address TEXT NOT NULL,
            from_name TEXT CONSTRAINT "from_name must be at most 255 characters" CHECK (length(from_name) <= 255),
            reply_to TEXT,
            enabled INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
            is_default INTEGER NOT NULL DEFAULT 0 CHECK (is_default IN (0, 1)),
            fallback TEXT NOT NULL DEFAULT 'platform'
                CONSTRAINT "fallback must be platform or none" CHECK (fallback IN ('platform', 'none')),
            dkim TEXT NOT NULL DEFAULT 'platform'
                CONSTRAINT "dkim must be platform or server" CHECK (dkim IN ('platform', 'server')),
            authorized_domains TEXT NOT NULL DEFAULT '',
            authorized_senders TEXT NOT NULL DEFAULT '',
            block_unauthorized INTEGER NOT NULL DEFAULT 0 CHECK (block_unauthorized IN (0, 1)),
            priority INTEGER NOT NULL DEFAULT 3 CONSTRAINT "priority must be 1-5" CHECK (priority BETWEEN 1 AND 5),
            -- NULL: [delivery] default_max_connections.
            max_connections INTEGER CONSTRAINT "max_connections must be 1-100" CHECK (max_connections BETWEEN 1 AND 100),
            rate_per_minute INTEGER CONSTRAINT "rate_per_minute must be positive" CHECK (rate_per_minute > 0),
            ca_file TEXT,
            status TEXT NOT NULL DEFAULT 'not_verified'
                CHECK (status IN ('not_verified', 'verified', 'error')),
            error_kind TEXT CHECK (error_kind IN ('connection_failed', 'auth_failed', 'tls_failed',
                                                  'from_rejected', 'recipient_rejected', 'unknown')),
            error_text TEXT,
            status_changed_at REAL,
            -- Bumped whenever host, port, security, credentials or CA change: pools compare it.
            settings_version INTEGER NOT NULL DEFAULT 1,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            UNIQUE (tenant, name),
            CHECK (status = 'error' OR error_kind IS NULL),
            CONSTRAINT "a disabled configuration cannot be the default" CHECK (NOT (is_default = 1 AND enabled = 0))
        );
        CREATE UNIQUE INDEX smtp_configs_one_default ON smtp_configs (tenant) WHERE is_default = 1;

        CREATE TABLE routes (
            id INTEGER PRIMARY KEY,
            tenant TEXT NOT NULL,
            kind TEXT NOT NULL CONSTRAINT "kind must be advertiser, cname or category"
                CHECK (kind IN ('advertiser', 'cname', 'category')),
            key TEXT NOT NULL CONSTRAINT "key must be 1-255 characters" CHECK (length(key) BETWEEN 1 AND 255),
            config_id INTEGER NOT NULL REFERENCES smtp_configs (id) ON DELETE CASCADE,
            created_at REAL NOT NULL,
            UNIQUE (tenant, kind, key),
            CONSTRAINT "a cname route cannot be a wildcard" CHECK (kind <> 'cname' OR instr(key, '*') = 0)
        );
        CREATE INDEX routes_config ON routes (config_id);

        CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            tenant TEXT CONSTRAINT "tenant must be NULL or 1-255 characters" CHECK (length(tenant) BETWEEN 1 AND 255),
            advertiser TEXT,
            cname TEXT,
            category TEXT NOT NULL
                CONSTRAINT "category must be 1-64 characters of [a-z0-9_.-]"
                CHECK (length(category) BETWEEN 1 AND 64 AND category NOT GLOB '*[^a-z0-9_.-]*'),
            priority INTEGER
                CONSTRAINT "priority must be NULL or an integer 1-5"
                CHECK (priority IS NULL OR (typeof(priority) = 'integer' AND priority BETWEEN 1 AND 5)),
            send_at REAL CONSTRAINT "send_at must be Unix seconds" CHECK (send_at IS NULL OR typeof(send_at) IN ('integer', 'real')),
            expires_at REAL CONSTRAINT "expires_at must be Unix seconds" CHECK (expires_at IS NULL OR typeof(expires_at) IN ('integer', 'real')),
            mail_from TEXT CONSTRAINT "mail_from must not contain CR or LF"
                CHECK (instr(mail_from, char(13)) = 0 AND instr(mail_from, char(10)) = 0),
            from_name TEXT CONSTRAINT "from_name must not contain CR or LF"
                CHECK (instr(from_name, char(13)) = 0 AND instr(from_name, char(10)) = 0),
            reply_to TEXT CONSTRAINT "reply_to must not contain CR or LF"
                CHECK (instr(reply_to, char(13)) = 0 AND instr(reply_to, char(10)) = 0),
            rcpt_to TEXT NOT NULL
                CONSTRAINT "rcpt_to must be a non-empty JSON array of addresses"
                CHECK (CASE WHEN json_valid(rcpt_to)
                            THEN json_type(rcpt_to) = 'array' AND json_array_length(rcpt_to) > 0
                            ELSE 0 END),
            cc TEXT CONSTRAINT "cc must be a JSON array of addresses"
                CHECK (cc IS NULL OR CASE WHEN json_valid(cc) THEN json_type(cc) = 'array' ELSE 0 END),
            bcc TEXT CONSTRAINT "bcc must be a JSON array of addresses"
                CHECK (bcc IS NULL OR CASE WHEN json_valid(bcc) THEN json_type(bcc) = 'array' ELSE 0 END),
            subject TEXT NOT NULL
                CONSTRAINT "subject must not contain CR or LF"
                CHECK (instr(subject, char(13)) = 0 AND instr(subject, char(10)) = 0),
            text_body TEXT,
            html_body TEXT,
            headers TEXT CONSTRAINT "headers must be a JSON object"
                CHECK (headers IS NULL OR CASE WHEN json_valid(headers) THEN json_type(headers) = 'object' ELSE 0 END),
            idempotency_key TEXT UNIQUE,
            status TEXT NOT NULL DEFAULT 'queued'
                CONSTRAINT "status must be queued, sending, sent, deferred, failed, expired or cancelled"
                CHECK (status IN ('queued', 'sending', 'sent', 'deferred', 'failed', 'expired', 'cancelled')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL,
            lease_until REAL,
            config_id INTEGER REFERENCES smtp_configs (id) ON DELETE SET NULL,
            route TEXT CHECK (route IN ('advertiser', 'cname', 'category', 'default', 'platform', 'fallback')),
            last_error_kind TEXT,
            last_error TEXT,
            smtp_response TEXT,
            message_id_header TEXT,
            created_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0),
            sent_at REAL,
            CONSTRAINT "text_body or html_body is required" CHECK (text_body IS NOT NULL OR html_body IS NOT NULL)
        );
        CREATE INDEX messages_due ON messages (status, next_attempt_at) WHERE status IN ('queued', 'deferred');
        CREATE INDEX messages_sending ON messages (lease_until) WHERE status = 'sending';
        CREATE INDEX messages_tenant ON messages (tenant, status);
        CREATE INDEX messages_sent_at ON messages (sent_at) WHERE sent_at IS NOT NULL;

        CREATE TRIGGER messages_check_rcpt_to BEFORE INSERT ON messages
        WHEN CASE WHEN json_valid(NEW.rcpt_to) THEN json_type(NEW.rcpt_to) = 'array' ELSE 0 END
        BEGIN
            SELECT RAISE(ABORT, 'rcpt_to must hold only non-empty address strings without CR or LF')
            WHERE EXISTS (SELECT 1 FROM json_each(NEW.rcpt_to)
                          WHERE type <> 'text' OR value = '' OR instr(value, char(13)) OR instr(value, char(10)));
        END;

        CREATE TRIGGER messages_check_cc BEFORE INSERT ON messages
        WHEN CASE WHEN json_valid(NEW.cc) THEN json_type(NEW.cc) = 'array' ELSE 0 END
        BEGIN
            SELECT RAISE(ABORT, 'cc must hold only non-empty address strings without CR or LF')
            WHERE EXISTS (SELECT 1 FROM json_each(NEW.cc)
                          WHERE type <> 'text' OR value = '' OR instr(value, char(13)) OR instr(value, char(10)));
        END;

        CREATE TRIGGER messages_check_bcc BEFORE INSERT ON messages
        WHEN CASE WHEN json_valid(NEW.bcc) THEN json_type(NEW.bcc) = 'array' ELSE 0 END
        BEGIN
            SELECT RAISE(ABORT, 'bcc must hold only non-empty address strings without CR or LF')
            WHERE EXISTS (SELECT 1 FROM json_each(NEW.bcc)
                          WHERE type <> 'text' OR value = '' OR instr(value, char(13)) OR instr(value, char(10)));
        END;

        CREATE TRIGGER messages_check_headers BEFORE INSERT ON messages
        WHEN CASE WHEN json_valid(NEW.headers) THEN json_type(NEW.headers) = 'object' ELSE 0 END
        BEGIN
            SELECT RAISE(ABORT, 'headers may not set From, To, Cc, Bcc, Date or Message-ID')
            WHERE EXISTS (SELECT 1 FROM json_each(NEW.headers)
                          WHERE lower(key) IN ('from', 'to', 'cc', 'bcc', 'date', 'message-id'));
            SELECT RAISE(ABORT, 'headers names must be printable ASCII without colon or space, and values strings without CR or LF')
            WHERE EXISTS (SELECT 1 FROM json_each(NEW.headers)
                          WHERE type <> 'text' OR key = '' OR key GLOB '*[^!-9;-~]*'
                             OR instr(value, char(13)) OR instr(value, char(10)));
        END;

        CREATE TABLE attachments (
            id INTEGER PRIMARY KEY,
            message_id INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
            filename TEXT NOT NULL
                CONSTRAINT "filename must be 1-255 characters without CR or LF"
                CHECK (length(filename) BETWEEN 1 AND 255 AND instr(filename, char(13)) = 0
                       AND instr(filename, char(10)) = 0),
            content_type TEXT NOT NULL DEFAULT 'application/octet-stream'
                CONSTRAINT "content_type must look like type/subtype"
                CHECK (content_type GLOB '?*/?*' AND content_type NOT GLOB '*[^!-~]*'),
            content BLOB NOT NULL
        );
        CREATE INDEX attachments_message ON attachments (message_id);

        CREATE TABLE attempts (
            id INTEGER PRIMARY KEY,
            message_id INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
            attempt INTEGER NOT NULL,
            at REAL NOT NULL,
            config_id INTEGER,
            -- "tenant/name" at the time, so the log survives the configuration's deletion.
            config_label TEXT,
            route TEXT,
            server TEXT,
            outcome TEXT NOT NULL CHECK (outcome IN ('sent', 'deferred', 'failed', 'fallback')),
            error_kind TEXT,
            smtp_code INTEGER,
            enhanced_code TEXT,
            response TEXT,
            refused_recipients TEXT,
            duration_s REAL
        );
        CREATE INDEX attempts_message ON attempts (message_id, attempt);
        """

    /// The daemon "admits" each new row once: it routes it and stores the effective priority
    /// (message vs configuration, SPEC §4) and when it is due, so claiming is one indexed scan.
    static let v2 = """
        ALTER TABLE messages ADD COLUMN effective_priority INTEGER;
        CREATE INDEX messages_unadmitted ON messages (id) WHERE effective_priority IS NULL AND status = 'queued';
        CREATE INDEX messages_claim ON messages (effective_priority, id) WHERE status IN ('queued', 'deferred');
        """

    /// Enqueuers' mistakes that used to pass the INSERT and fail (or worse, sit) later: a row
    /// written as already `sent`, times in milliseconds, comma lists in place of one address.
    /// Triggers only look at new rows, so existing rows are kept as they are.
    static let v3 = """
        CREATE TRIGGER messages_check_daemon_columns BEFORE INSERT ON messages
        BEGIN
            SELECT RAISE(ABORT, 'status is the daemon''s: insert new rows as queued (leave status out)')
            WHERE NEW.status IS NOT 'queued';
            SELECT RAISE(ABORT, 'attempts is the daemon''s: leave it out of the INSERT') WHERE NEW.attempts IS NOT 0;
            SELECT RAISE(ABORT, 'next_attempt_at is the daemon''s: use send_at') WHERE NEW.next_attempt_at IS NOT NULL;
            SELECT RAISE(ABORT, 'lease_until is the daemon''s: leave it out of the INSERT') WHERE NEW.lease_until IS NOT NULL;
            SELECT RAISE(ABORT, 'config_id is the daemon''s: route with tenant, advertiser, cname and category')
            WHERE NEW.config_id IS NOT NULL;
            SELECT RAISE(ABORT, 'route is the daemon''s: route with tenant, advertiser, cname and category')
            WHERE NEW.route IS NOT NULL;
            SELECT RAISE(ABORT, 'last_error_kind is the daemon''s: leave it out of the INSERT') WHERE NEW.last_error_kind IS NOT NULL;
            SELECT RAISE(ABORT, 'last_error is the daemon''s: leave it out of the INSERT') WHERE NEW.last_error IS NOT NULL;
            SELECT RAISE(ABORT, 'smtp_response is the daemon''s: leave it out of the INSERT') WHERE NEW.smtp_response IS NOT NULL;
            SELECT RAISE(ABORT, 'message_id_header is the daemon''s: the daemon writes the Message-ID')
            WHERE NEW.message_id_header IS NOT NULL;
            SELECT RAISE(ABORT, 'sent_at is the daemon''s: leave it out of the INSERT') WHERE NEW.sent_at IS NOT NULL;
            SELECT RAISE(ABORT, 'effective_priority is the daemon''s: set priority instead') WHERE NEW.effective_priority IS NOT NULL;
        END;

        CREATE TRIGGER messages_check_times BEFORE INSERT ON messages
        BEGIN
            SELECT RAISE(ABORT, 'send_at must be Unix seconds between 2000-01-01 and 2200-01-01 (milliseconds? divide by 1000)')
            WHERE NEW.send_at IS NOT NULL AND typeof(NEW.send_at) IN ('integer', 'real')
              AND NOT (NEW.send_at BETWEEN 946684800 AND 7258118400);
            SELECT RAISE(ABORT, 'expires_at must be Unix seconds between 2000-01-01 and 2200-01-01 (milliseconds? divide by 1000)')
            WHERE NEW.expires_at IS NOT NULL AND typeof(NEW.expires_at) IN ('integer', 'real')
              AND NOT (NEW.expires_at BETWEEN 946684800 AND 7258118400);
            SELECT RAISE(ABORT, 'created_at must be Unix seconds between 2000-01-01 and 2200-01-01 (milliseconds? divide by 1000)')
            WHERE NOT (typeof(NEW.created_at) IN ('integer', 'real') AND NEW.created_at BETWEEN 946684800 AND 7258118400);
        END;

        \(addressShapeTrigger("rcpt_to"))

        \(addressShapeTrigger("cc"))

        \(addressShapeTrigger("bcc"))
        """

    /// Part of v3 (frozen with it): each element of a recipient list is one address, bare
    /// (`a@x.com`) or in angle brackets after a display name (`Name <a@x.com>`), with one `@`
    /// and nothing a list or a header could hide in. The daemon's RFC 5322 parser still has
    /// the last word; this catches, at INSERT, what SQL can see.
    private static func addressShapeTrigger(_ column: String) -> String {
        """
        CREATE TRIGGER messages_check_\(column)_addresses BEFORE INSERT ON messages
        WHEN CASE WHEN json_valid(NEW.\(column)) THEN json_type(NEW.\(column)) = 'array' ELSE 0 END
        BEGIN
            SELECT RAISE(ABORT, '\(column) must hold one address per element, like a@example.com or Name <a@example.com>')
            WHERE EXISTS (
                SELECT 1 FROM (
                    SELECT v, CASE WHEN instr(v, '<') > 0
                                   THEN substr(v, instr(v, '<') + 1, length(v) - instr(v, '<') - 1)
                                   ELSE v END AS address
                    FROM (SELECT trim(value) AS v FROM json_each(NEW.\(column)) WHERE type = 'text'))
                WHERE NOT (
                    (instr(v, '<') = 0 AND instr(v, '>') = 0
                     OR (v GLOB '*>' AND length(v) - length(replace(v, '<', '')) = 1
                         AND length(v) - length(replace(v, '>', '')) = 1))
                    AND length(address) - length(replace(address, '@', '')) = 1
                    AND address NOT GLOB '@*' AND address NOT GLOB '*@'
                    AND address NOT GLOB '*[ ,;<>' || char(9) || ']*'));
        END;
        """
    }

    /// Admission looks only at rows that are due, so a million rows scheduled years ahead
    /// cost nothing until their time; every change of configurations or routes bumps one
    /// counter, so a claim can route against the routing as committed without re-reading it;
    /// and a configuration that is down keeps its probe schedule (each failed probe doubles
    /// the wait) in the database, where every daemon sees it.
    static let v4 = """
        ALTER TABLE smtp_configs ADD COLUMN probe_failures INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE smtp_configs ADD COLUMN next_probe_at REAL;

        DROP INDEX messages_unadmitted;
        CREATE INDEX messages_unadmitted_due ON messages (coalesce(send_at, created_at))
            WHERE effective_priority IS NULL AND status = 'queued';

        CREATE TABLE routing_version (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL);
        INSERT INTO routing_version (id, version) VALUES (1, 1);
        CREATE TRIGGER smtp_configs_bump_routing_insert AFTER INSERT ON smtp_configs
        BEGIN UPDATE routing_version SET version = version + 1; END;
        CREATE TRIGGER smtp_configs_bump_routing_update AFTER UPDATE ON smtp_configs
        BEGIN UPDATE routing_version SET version = version + 1; END;
        CREATE TRIGGER smtp_configs_bump_routing_delete AFTER DELETE ON smtp_configs
        BEGIN UPDATE routing_version SET version = version + 1; END;
        CREATE TRIGGER routes_bump_routing_insert AFTER INSERT ON routes
        BEGIN UPDATE routing_version SET version = version + 1; END;
        CREATE TRIGGER routes_bump_routing_update AFTER UPDATE ON routes
        BEGIN UPDATE routing_version SET version = version + 1; END;
        CREATE TRIGGER routes_bump_routing_delete AFTER DELETE ON routes
        BEGIN UPDATE routing_version SET version = version + 1; END;
        """

    /// As Postfix keeps its active and deferred queues apart: an admitted `queued` row is due
    /// and waits only for room; a `deferred` row waits for next_attempt_at and becomes `queued`
    /// when it passes. Claims scan only the first, in order; neither unadmitted rows nor
    /// retries waiting for hours are in their way, and expiry has an index of its own.
    static let v5 = """
        DROP INDEX messages_claim;
        DROP INDEX messages_due;
        CREATE INDEX messages_ready ON messages (effective_priority, id)
            WHERE status = 'queued' AND effective_priority IS NOT NULL;
        CREATE INDEX messages_waiting ON messages (next_attempt_at) WHERE status = 'deferred';
        CREATE INDEX messages_expiry ON messages (expires_at)
            WHERE status IN ('queued', 'deferred') AND expires_at IS NOT NULL;
        -- Before v4 every row was admitted at once, a scheduled one too: such a row waits for its
        -- time with the retries, or it would be sent early.
        UPDATE messages SET status = 'deferred'
        WHERE status = 'queued' AND effective_priority IS NOT NULL
          AND next_attempt_at > (julianday('now') - 2440587.5) * 86400.0;
        """

    /// The message trace (`queue list --since`, `GET /v1/messages?since=`): without it a time
    /// bound that few rows meet read the whole table, bodies and all. Only an INSERT writes
    /// it (nothing updates created_at). A configuration's trace needs no index of its own:
    /// its tenant's (`messages_tenant`) narrows it, and its attempts are by message.
    static let v6 = """
        CREATE INDEX messages_created ON messages (created_at);
        """
}

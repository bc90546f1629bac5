-- A database written by llmkit before its migration lists were declared with a decorator:
-- every list migrated (index m001-m002, runlog m001-m002, keys m001, evals m001), one row in
-- each durable table. The upgrade test in tests/test_migrate.py opens it with today's code.
BEGIN TRANSACTION;
CREATE TABLE _migrations (kind TEXT NOT NULL, name TEXT NOT NULL, applied_at TEXT NOT NULL DEFAULT (datetime('now')), PRIMARY KEY (kind, name));
INSERT INTO "_migrations" VALUES('index','m001_initial','2024-05-01 10:00:00');
INSERT INTO "_migrations" VALUES('index','m002_generation','2024-05-01 10:00:00');
INSERT INTO "_migrations" VALUES('runlog','m001_initial','2024-05-01 10:00:00');
INSERT INTO "_migrations" VALUES('runlog','m002_truncated_notes_and_rejects','2024-05-01 10:00:00');
INSERT INTO "_migrations" VALUES('keys','m001_initial','2024-05-01 10:00:00');
INSERT INTO "_migrations" VALUES('evals','m001_initial','2024-05-01 10:00:00');
CREATE TABLE api_keys (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            scope TEXT NOT NULL CHECK (scope IN ('admin', 'run')),
            digest TEXT NOT NULL,
            prefix TEXT NOT NULL,
            created_at TEXT NOT NULL,
            last_used_at TEXT,
            revoked_at TEXT
        );
INSERT INTO "api_keys" VALUES(1,'deploy','run','0000000000000000000000000000000000000000000000000000000000000000','llmkit_abcde','2024-05-01T10:00:00.000Z',NULL,NULL);
CREATE TABLE api_keys_generation (id INTEGER PRIMARY KEY CHECK (id = 1), generation INTEGER NOT NULL);
INSERT INTO "api_keys_generation" VALUES(1,0);
CREATE TABLE eval_results (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL REFERENCES eval_runs (run_id),
            role TEXT NOT NULL DEFAULT 'after',
            prompt_key TEXT NOT NULL,
            version_number INTEGER,
            version_sha TEXT,
            case_name TEXT NOT NULL,
            file TEXT,
            model TEXT NOT NULL,
            repeat_index INTEGER NOT NULL,
            passed INTEGER NOT NULL,
            output TEXT,
            assertions TEXT NOT NULL,
            error TEXT,
            latency_ms REAL,
            input_tokens INTEGER,
            output_tokens INTEGER,
            cost REAL,
            cached INTEGER NOT NULL,
            human_score INTEGER,
            created_at TEXT NOT NULL
        );
INSERT INTO "eval_results" VALUES(1,'run-before','after','greet',NULL,'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa','says hi',NULL,'echo',0,1,'user: hi','[]',NULL,NULL,NULL,NULL,NULL,0,4,'2024-05-01T10:00:01.000Z');
CREATE TABLE eval_runs (
            run_id TEXT PRIMARY KEY,
            started_at TEXT NOT NULL,
            finished_at TEXT,
            ref TEXT,
            base_ref TEXT,
            source TEXT NOT NULL,
            summary TEXT
        );
INSERT INTO "eval_runs" VALUES('run-before','2024-05-01T10:00:00.000Z','2024-05-01T10:00:01.000Z',NULL,NULL,'cli',NULL);
CREATE TABLE ix_blobs (
            id TEXT PRIMARY KEY,
            content TEXT,
            error TEXT
        );
CREATE TABLE ix_commits (
            seq INTEGER PRIMARY KEY,
            sha TEXT NOT NULL UNIQUE,
            author_name TEXT NOT NULL,
            author_email TEXT NOT NULL,
            authored_at INTEGER NOT NULL,
            committed_at INTEGER NOT NULL,
            message TEXT NOT NULL
        );
CREATE TABLE ix_generation (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            generation INTEGER NOT NULL
        );
INSERT INTO "ix_generation" VALUES(1,0);
CREATE TABLE ix_prompts (
            key TEXT PRIMARY KEY,
            id INTEGER NOT NULL UNIQUE,
            path TEXT NOT NULL,
            first_seq INTEGER,
            present INTEGER NOT NULL DEFAULT 0
        );
CREATE TABLE ix_state (
            name TEXT PRIMARY KEY,
            value TEXT
        );
CREATE TABLE ix_versions (
            key TEXT NOT NULL,
            number INTEGER NOT NULL,
            seq INTEGER,
            blob TEXT NOT NULL,
            PRIMARY KEY (key, number)
        );
CREATE TABLE response_cache (
            key TEXT PRIMARY KEY,
            model TEXT NOT NULL,
            response TEXT NOT NULL,
            latency_ms REAL,
            created_at TEXT NOT NULL
        );
INSERT INTO "response_cache" VALUES('k','echo','{}',NULL,'2024-05-01T10:00:00.000Z');
CREATE TABLE run_log (
            id INTEGER PRIMARY KEY,
            trace_id TEXT NOT NULL UNIQUE,
            prompt_key TEXT NOT NULL,
            version_number INTEGER,
            version_sha TEXT,
            model TEXT NOT NULL,
            request TEXT NOT NULL,
            response TEXT,
            status TEXT NOT NULL CHECK (status IN ('ok', 'error', 'cancelled')),
            error TEXT,
            http_status INTEGER,
            input_tokens INTEGER,
            output_tokens INTEGER,
            reasoning_tokens INTEGER,
            cost REAL,
            latency_ms INTEGER,
            ttft_ms INTEGER,
            stream INTEGER NOT NULL DEFAULT 0,
            api_key_id INTEGER,
            source TEXT NOT NULL CHECK (source IN ('api', 'ui', 'eval', 'cli')),
            created_at TEXT NOT NULL
        , truncated TEXT, log_notes TEXT);
INSERT INTO "run_log" VALUES(1,'trace-before','greet',1,'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa','echo','{"messages": [{"role": "user", "content": "hi"}]}','"user: hi"','ok',NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,0,NULL,'api','2024-05-01T10:00:00.000Z',NULL,NULL);
CREATE TABLE run_log_rejects (
            id INTEGER PRIMARY KEY,
            trace_id TEXT,
            error TEXT NOT NULL,
            row TEXT NOT NULL,
            rejected_at TEXT NOT NULL
        );
CREATE INDEX ix_versions_seq ON ix_versions (seq);
CREATE INDEX run_log_created_at ON run_log (created_at);
CREATE INDEX run_log_prompt_created_at ON run_log (prompt_key, created_at);
CREATE INDEX run_log_latency_ms ON run_log (prompt_key, version_number, version_sha, latency_ms);
CREATE INDEX run_log_ttft_ms ON run_log (prompt_key, version_number, version_sha, ttft_ms);
CREATE UNIQUE INDEX api_keys_digest ON api_keys (digest);
CREATE TRIGGER api_keys_revoked AFTER UPDATE OF revoked_at ON api_keys
        WHEN OLD.revoked_at IS NOT NEW.revoked_at
        BEGIN
            UPDATE api_keys_generation SET generation = generation + 1 WHERE id = 1;
        END;
CREATE TRIGGER api_keys_deleted AFTER DELETE ON api_keys
        BEGIN
            UPDATE api_keys_generation SET generation = generation + 1 WHERE id = 1;
        END;
CREATE INDEX eval_results_version ON eval_results (prompt_key, version_sha);
CREATE INDEX eval_results_run ON eval_results (run_id);
COMMIT;

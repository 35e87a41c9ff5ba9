-- A Blnk-shaped schema: Blnk's main tables with realistic types, keys, constraints and indexes,
-- as Blnk 0.12 left them (blnk_chain.sql then upgrades it to 0.15). Foreign keys and secondary
-- indexes are added by blnk_post_load.sql after the data is loaded: one validating pass is much
-- faster than a check per inserted row.
CREATE SCHEMA blnk;

-- The migrations Blnk has applied (sql-migrate's table, in Blnk's schema since cmd/migrate.go
-- calls migrate.SetSchema("blnk")): what restore tests read to tell the Blnk version.
CREATE TABLE blnk.gorp_migrations (
    id VARCHAR(255) NOT NULL PRIMARY KEY,
    applied_at TIMESTAMPTZ
);

CREATE TABLE blnk.ledgers (
    id SERIAL PRIMARY KEY,
    ledger_id TEXT NOT NULL UNIQUE CHECK (ledger_id LIKE 'ldg_%'),
    name TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    meta_data JSONB NOT NULL DEFAULT '{}'
);

CREATE TABLE blnk.identity (
    id SERIAL PRIMARY KEY,
    identity_id TEXT NOT NULL UNIQUE CHECK (identity_id LIKE 'idt_%'),
    identity_type TEXT NOT NULL CHECK (identity_type IN ('individual', 'organization')),
    first_name TEXT, last_name TEXT, other_names TEXT, gender TEXT, dob DATE,
    email_address TEXT, phone_number TEXT, nationality TEXT, organization_name TEXT,
    category TEXT, street TEXT, country TEXT, state TEXT, post_code TEXT, city TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    meta_data JSONB NOT NULL DEFAULT '{}'
);

CREATE TABLE blnk.balances (
    id SERIAL PRIMARY KEY,
    balance_id TEXT NOT NULL UNIQUE CHECK (balance_id LIKE 'bln_%'),
    indicator TEXT,
    balance NUMERIC NOT NULL DEFAULT 0,
    credit_balance NUMERIC NOT NULL DEFAULT 0 CHECK (credit_balance >= 0),
    debit_balance NUMERIC NOT NULL DEFAULT 0 CHECK (debit_balance >= 0),
    inflight_balance NUMERIC NOT NULL DEFAULT 0,
    inflight_credit_balance NUMERIC NOT NULL DEFAULT 0,
    inflight_debit_balance NUMERIC NOT NULL DEFAULT 0,
    currency TEXT NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    currency_multiplier BIGINT NOT NULL DEFAULT 100,
    ledger_id TEXT NOT NULL,
    identity_id TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    inflight_expires_at TIMESTAMPTZ,
    version BIGINT NOT NULL DEFAULT 0,
    meta_data JSONB NOT NULL DEFAULT '{}'
);

CREATE TABLE blnk.accounts (
    id SERIAL PRIMARY KEY,
    account_id TEXT NOT NULL UNIQUE CHECK (account_id LIKE 'acc_%'),
    name TEXT NOT NULL,
    number TEXT NOT NULL,
    bank_name TEXT NOT NULL,
    currency TEXT NOT NULL,
    balance_id TEXT NOT NULL,
    identity_id TEXT,
    ledger_id TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    meta_data JSONB NOT NULL DEFAULT '{}'
);

CREATE TABLE blnk.balance_monitors (
    id SERIAL PRIMARY KEY,
    monitor_id TEXT NOT NULL UNIQUE CHECK (monitor_id LIKE 'mon_%'),
    balance_id TEXT NOT NULL,
    field TEXT NOT NULL CHECK (field IN ('balance', 'credit_balance', 'debit_balance')),
    operator TEXT NOT NULL CHECK (operator IN ('>', '<', '>=', '<=', '!=', '=')),
    value NUMERIC NOT NULL,
    precision BIGINT NOT NULL DEFAULT 100,
    precise_value NUMERIC NOT NULL,
    description TEXT,
    call_back_url TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE blnk.transactions (
    id BIGSERIAL PRIMARY KEY,
    transaction_id TEXT NOT NULL UNIQUE CHECK (transaction_id LIKE 'txn_%'),
    parent_transaction TEXT,
    source TEXT NOT NULL,
    destination TEXT NOT NULL,
    reference TEXT NOT NULL UNIQUE,
    amount NUMERIC NOT NULL CHECK (amount > 0),
    precise_amount NUMERIC NOT NULL,
    precision BIGINT NOT NULL DEFAULT 100,
    rate DOUBLE PRECISION NOT NULL DEFAULT 1,
    currency TEXT NOT NULL,
    description TEXT,
    status TEXT NOT NULL CHECK (status IN ('QUEUED', 'APPLIED', 'INFLIGHT', 'VOID', 'COMMIT',
                                           'SCHEDULED', 'REJECTED')),
    hash TEXT NOT NULL CHECK (hash ~ '^[0-9a-f]{64}$'),
    allow_overdraft BOOLEAN NOT NULL DEFAULT false,
    inflight BOOLEAN NOT NULL DEFAULT false,
    skip_queue BOOLEAN NOT NULL DEFAULT false,
    atomic BOOLEAN NOT NULL DEFAULT false,
    created_at TIMESTAMP NOT NULL DEFAULT now(),  -- without time zone, as in Blnk
    scheduled_for TIMESTAMP,
    inflight_expiry_date TIMESTAMP,
    effective_date TIMESTAMP,
    meta_data JSONB NOT NULL DEFAULT '{}',
    CONSTRAINT source_is_not_destination CHECK (source <> destination)
);

-- Double entry: every applied transaction debits its source and credits its destination.
CREATE TABLE blnk.transaction_journal (
    id BIGSERIAL PRIMARY KEY,
    transaction_id TEXT NOT NULL,
    balance_id TEXT NOT NULL,
    direction TEXT NOT NULL CHECK (direction IN ('debit', 'credit')),
    amount NUMERIC NOT NULL CHECK (amount > 0),
    currency TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    UNIQUE (transaction_id, direction)
);

CREATE TABLE blnk.balance_snapshots (
    id BIGSERIAL PRIMARY KEY,
    balance_id TEXT NOT NULL,
    snapshot_date DATE NOT NULL,
    balance NUMERIC NOT NULL,
    credit_balance NUMERIC NOT NULL,
    debit_balance NUMERIC NOT NULL,
    currency TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (balance_id, snapshot_date)
);

CREATE TABLE blnk.api_keys (
    api_key_id TEXT PRIMARY KEY CHECK (api_key_id LIKE 'api_%'),
    key_hash TEXT NOT NULL UNIQUE CHECK (key_hash ~ '^[0-9a-f]{64}$'),
    name TEXT NOT NULL,
    owner_id TEXT NOT NULL,
    scopes TEXT[] NOT NULL DEFAULT '{}',
    expires_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at TIMESTAMPTZ,
    last_used_ip INET,
    is_revoked BOOLEAN NOT NULL DEFAULT false
);

CREATE TABLE blnk.external_transactions (
    id TEXT PRIMARY KEY,
    amount NUMERIC NOT NULL,
    reference TEXT NOT NULL,
    currency TEXT NOT NULL,
    description TEXT,
    date TIMESTAMPTZ NOT NULL,
    source TEXT NOT NULL,
    upload_id TEXT NOT NULL
);

CREATE TABLE blnk.reconciliations (
    id SERIAL PRIMARY KEY,
    reconciliation_id TEXT NOT NULL UNIQUE,
    upload_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('started', 'in_progress', 'completed', 'failed')),
    matched_transactions INTEGER NOT NULL DEFAULT 0,
    unmatched_transactions INTEGER NOT NULL DEFAULT 0,
    is_dry_run BOOLEAN NOT NULL DEFAULT false,
    started_at TIMESTAMPTZ NOT NULL,
    completed_at TIMESTAMPTZ
);

CREATE TABLE blnk.matching_rules (
    id SERIAL PRIMARY KEY,
    rule_id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    description TEXT,
    criteria JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE blnk.matches (
    external_transaction_id TEXT NOT NULL,
    internal_transaction_id TEXT NOT NULL,
    reconciliation_id TEXT NOT NULL,
    amount NUMERIC NOT NULL,
    date TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (external_transaction_id, internal_transaction_id)
);

CREATE TABLE blnk.lineage_outbox (
    id BIGSERIAL PRIMARY KEY,
    transaction_id TEXT NOT NULL,
    lineage_type TEXT NOT NULL,
    payload JSONB NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'processing', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    processed_at TIMESTAMPTZ
);

-- plpgsql: every change to a balance bumps its version (optimistic locking, as Blnk does).
CREATE FUNCTION blnk.bump_balance_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := OLD.version + 1;
    RETURN NEW;
END;
$$;
CREATE TRIGGER balances_bump_version BEFORE UPDATE ON blnk.balances
    FOR EACH ROW EXECUTE FUNCTION blnk.bump_balance_version();

-- Transactions are never updated (sql/1742098199.sql; Blnk 0.15 makes it NULL-safe and frees the
-- chain columns, see blnk_chain.sql).
CREATE FUNCTION blnk.prevent_transaction_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.transaction_id = OLD.transaction_id AND NEW.source = OLD.source AND
        NEW.destination = OLD.destination AND NEW.description = OLD.description AND
        NEW.reference = OLD.reference AND NEW.amount = OLD.amount AND
        NEW.currency = OLD.currency AND NEW.status = OLD.status AND NEW.hash = OLD.hash AND
        NEW.created_at = OLD.created_at AND NEW.scheduled_for = OLD.scheduled_for) THEN
        RETURN NEW;
    ELSE
        RAISE EXCEPTION 'Cannot modify transaction data. Only meta_data field can be updated.';
    END IF;
END;
$$;
CREATE TRIGGER prevent_transaction_update_trigger BEFORE UPDATE ON blnk.transactions
    FOR EACH ROW EXECUTE FUNCTION blnk.prevent_transaction_update();

-- Per currency, the balances of a double-entry ledger add up to zero.
CREATE FUNCTION blnk.ledger_imbalance() RETURNS TABLE (currency TEXT, imbalance NUMERIC)
LANGUAGE sql STABLE AS $$
    SELECT b.currency, sum(b.balance) FROM blnk.balances b GROUP BY b.currency
    HAVING sum(b.balance) <> 0
$$;

CREATE MATERIALIZED VIEW blnk.daily_volume AS
    SELECT currency, date_trunc('day', created_at) AS day, count(*) AS transactions, sum(amount) AS volume
    FROM blnk.transactions WHERE status = 'APPLIED' GROUP BY 1, 2
WITH NO DATA;

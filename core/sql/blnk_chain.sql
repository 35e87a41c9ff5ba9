-- Upgrades the 0.12-shaped schema of blnk_schema.sql to Blnk 0.15, as Blnk's own migrations do:
-- unused columns dropped (sql/1780963300.sql), the transaction hash chain (sql/1781162328.sql):
-- three nullable chain columns on transactions, the chain_state bookmark row, and an
-- immutability trigger that is NULL-safe and leaves meta_data and the chain columns writable.
ALTER TABLE blnk.transactions DROP COLUMN rate;
ALTER TABLE blnk.balances DROP COLUMN currency_multiplier;

ALTER TABLE blnk.transactions
    ADD COLUMN chain_seq BIGINT,
    ADD COLUMN chain_prev_hash CHAR(64),
    ADD COLUMN chain_hash CHAR(64);

CREATE TABLE blnk.chain_state (
    chain_key    TEXT PRIMARY KEY,
    last_seq     BIGINT    NOT NULL DEFAULT 0,
    head_hash    CHAR(64)  NOT NULL,
    genesis_hash CHAR(64)  NOT NULL,
    genesis_at   TIMESTAMP NOT NULL DEFAULT NOW(),
    updated_at   TIMESTAMP NOT NULL DEFAULT NOW()
);
INSERT INTO blnk.chain_state (chain_key, head_hash, genesis_hash, genesis_at, updated_at)
VALUES ('global', repeat('0', 64), repeat('0', 64), timestamp '2024-12-31 00:00:00',
        timestamp '2024-12-31 00:00:00');

CREATE OR REPLACE FUNCTION blnk.prevent_transaction_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (
        NEW.transaction_id IS DISTINCT FROM OLD.transaction_id OR
        NEW.source         IS DISTINCT FROM OLD.source OR
        NEW.destination    IS DISTINCT FROM OLD.destination OR
        NEW.description    IS DISTINCT FROM OLD.description OR
        NEW.reference      IS DISTINCT FROM OLD.reference OR
        NEW.amount         IS DISTINCT FROM OLD.amount OR
        NEW.precise_amount IS DISTINCT FROM OLD.precise_amount OR
        NEW.precision      IS DISTINCT FROM OLD.precision OR
        NEW.currency       IS DISTINCT FROM OLD.currency OR
        NEW.status         IS DISTINCT FROM OLD.status OR
        NEW.hash           IS DISTINCT FROM OLD.hash OR
        NEW.created_at     IS DISTINCT FROM OLD.created_at OR
        NEW.scheduled_for  IS DISTINCT FROM OLD.scheduled_for
    ) THEN
        RAISE EXCEPTION 'Cannot modify transaction data. Only meta_data and chain fields can be updated.';
    END IF;
    RETURN NEW;
END;
$$;

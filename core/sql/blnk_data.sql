-- Fills the Blnk-shaped schema server-side; {n} is the number of transactions.
-- Ids are deterministic (md5 of a counter cast to uuid) so rows can refer to each other by
-- arithmetic instead of joins. Every APPLIED transaction moves money between two balances of
-- the same currency, so per currency the balances add up to zero.
CREATE TEMP TABLE gen_params AS
SELECT {n}::bigint AS n,
       greatest(10, {n} / 100)::bigint AS identities,
       (4 * greatest(10, {n} / 200))::bigint AS balances,   -- a multiple of the 4 currencies
       ARRAY['USD', 'EUR', 'GBP', 'NGN'] AS currencies;

INSERT INTO blnk.ledgers (ledger_id, name, created_at, meta_data)
SELECT 'ldg_' || md5('l' || i)::uuid, (ARRAY['General Ledger', 'Customer Wallets', 'Merchant Settlements', 'Fees', 'FX Pool'])[i],
       timestamptz '2024-06-01 00:00:00+00' + i * interval '1 hour',
       jsonb_build_object('owner', 'finance', 'region', (ARRAY['us', 'eu', 'uk', 'ng', 'global'])[i])
FROM generate_series(1, 5) i;

INSERT INTO blnk.identity (identity_id, identity_type, first_name, last_name, email_address,
    phone_number, nationality, organization_name, category, street, country, state, post_code,
    city, dob, gender, created_at, meta_data)
SELECT 'idt_' || md5('i' || i)::uuid,
       CASE WHEN i % 7 = 0 THEN 'organization' ELSE 'individual' END,
       (ARRAY['Ada', 'Kemi', 'Liam', 'Sofia', 'Chen', 'Amara', 'Noah', 'Ines'])[i % 8 + 1],
       (ARRAY['Okafor', 'Smith', 'Garcia', 'Müller', 'Adeyemi', 'Rossi', 'Kim'])[i % 7 + 1],
       'user' || i || '@example.com', '+1555' || lpad((i % 10000000)::text, 7, '0'),
       (ARRAY['NG', 'US', 'GB', 'DE'])[i % 4 + 1],
       CASE WHEN i % 7 = 0 THEN 'Org ' || i END, 'customer', i || ' Market Street',
       (ARRAY['NG', 'US', 'GB', 'DE'])[i % 4 + 1], 'State ' || i % 30, lpad((i % 99999)::text, 5, '0'),
       (ARRAY['Lagos', 'New York', 'London', 'Berlin'])[i % 4 + 1],
       date '1960-01-01' + (i % 15000)::int, (ARRAY['female', 'male'])[i % 2 + 1],
       timestamptz '2024-06-01 00:00:00+00' + i * interval '1 minute',
       jsonb_build_object('kyc_tier', i % 3 + 1, 'risk', (ARRAY['low', 'medium', 'high'])[i % 3 + 1])
FROM gen_params, generate_series(1, identities) i;

INSERT INTO blnk.balances (balance_id, indicator, currency, currency_multiplier, ledger_id,
    identity_id, created_at, meta_data)
SELECT 'bln_' || md5('b' || i)::uuid,
       CASE WHEN i <= 4 THEN '@World' || currencies[(i - 1) % 4 + 1] END,
       currencies[(i - 1) % 4 + 1], 100,
       'ldg_' || md5('l' || (i % 5 + 1))::uuid,
       CASE WHEN i % 10 <> 0 THEN 'idt_' || md5('i' || ((i - 1) % identities + 1))::uuid END,
       timestamptz '2024-06-02 00:00:00+00' + i * interval '1 minute',
       jsonb_build_object('purpose', (ARRAY['wallet', 'savings', 'settlement', 'fees'])[i % 4 + 1])
FROM gen_params, generate_series(1, balances) i;

-- Transaction i is in currency c = i % 4; its source and destination are two different
-- balances of that currency (balance numbers 4k + c + 1).
INSERT INTO blnk.transactions (transaction_id, parent_transaction, source, destination, reference,
    amount, precise_amount, precision, rate, currency, description, status, hash, allow_overdraft,
    inflight, skip_queue, atomic, created_at, scheduled_for, inflight_expiry_date, effective_date,
    meta_data)
SELECT 'txn_' || md5('t' || t.i)::uuid,
       CASE WHEN t.i % 25 = 0 THEN 'txn_' || md5('t' || (t.i - 1))::uuid END,
       'bln_' || md5('b' || (4 * t.src + t.c + 1))::uuid,
       'bln_' || md5('b' || (4 * t.dst + t.c + 1))::uuid,
       'ref_' || t.i,
       t.amount, t.amount * 100, 100, 1, currencies[t.c + 1],
       'Payment ' || t.i || ' for order ' || (t.i * 31 % 100000),
       t.status,
       encode(sha256(('txn-' || t.i)::bytea), 'hex'),
       t.i % 3 = 0, t.status = 'INFLIGHT', t.i % 5 = 0, t.i % 11 = 0,
       t.created_at,
       CASE WHEN t.status = 'QUEUED' THEN t.created_at + interval '1 day' END,
       CASE WHEN t.status = 'INFLIGHT' THEN t.created_at + interval '2 hours' END,
       t.created_at,
       jsonb_build_object(
           'customer_ref', 'C' || (t.i % 5000),
           'channel', (ARRAY['card', 'bank_transfer', 'wallet', 'ussd'])[t.i % 4 + 1],
           'invoice', 'INV-' || t.i,
           'tags', jsonb_build_array('batch-' || (t.i / 1000), CASE WHEN t.i % 2 = 0 THEN 'even' ELSE 'odd' END))
FROM gen_params,
LATERAL (
    SELECT g.i,
           (g.i % 4)::int AS c,
           (g.i * 2654435761 % 4294967296) % (balances / 4) AS src,
           ((g.i * 2654435761 % 4294967296) % (balances / 4)
             + 1 + (g.i * 40503 % 65537) % (balances / 4 - 1)) % (balances / 4) AS dst,
           ((g.i * 7919 % 100000) + 1)::numeric / 100 AS amount,
           CASE WHEN g.i % 50 = 0 THEN 'QUEUED' WHEN g.i % 50 = 1 THEN 'INFLIGHT'
                WHEN g.i % 97 = 0 THEN 'VOID' ELSE 'APPLIED' END AS status,
           timestamptz '2025-01-01 00:00:00+00' + g.i * interval '13 seconds' AS created_at
    FROM generate_series(1, n) AS g(i)
) t;

INSERT INTO blnk.transaction_journal (transaction_id, balance_id, direction, amount, currency, created_at)
SELECT t.transaction_id, CASE d.direction WHEN 'debit' THEN t.source ELSE t.destination END,
       d.direction, t.amount, t.currency, t.created_at
FROM blnk.transactions t CROSS JOIN (VALUES ('debit'), ('credit')) AS d(direction)
WHERE t.status = 'APPLIED';

-- Balances follow from the journal (the version trigger fires once per balance).
UPDATE blnk.balances b
SET credit_balance = j.credit, debit_balance = j.debit, balance = j.credit - j.debit
FROM (SELECT balance_id,
             coalesce(sum(amount) FILTER (WHERE direction = 'credit'), 0) AS credit,
             coalesce(sum(amount) FILTER (WHERE direction = 'debit'), 0) AS debit
      FROM blnk.transaction_journal GROUP BY balance_id) j
WHERE b.balance_id = j.balance_id;

INSERT INTO blnk.balance_snapshots (balance_id, snapshot_date, balance, credit_balance, debit_balance, currency)
SELECT b.balance_id, date '2025-06-01' + d, b.balance, b.credit_balance, b.debit_balance, b.currency
FROM blnk.balances b, generate_series(0, 2) d;

INSERT INTO blnk.accounts (account_id, name, number, bank_name, currency, balance_id, identity_id, ledger_id, meta_data)
SELECT 'acc_' || md5('a' || b.id)::uuid, 'Account ' || b.id, lpad((b.id * 7919 % 10000000000)::text, 10, '0'),
       (ARRAY['First Bank', 'Chase', 'Barclays', 'Deutsche Bank'])[b.id % 4 + 1],
       b.currency, b.balance_id, b.identity_id, b.ledger_id, jsonb_build_object('verified', b.id % 3 <> 0)
FROM blnk.balances b WHERE b.id % 2 = 0;

INSERT INTO blnk.balance_monitors (monitor_id, balance_id, field, operator, value, precise_value, description, call_back_url)
SELECT 'mon_' || md5('m' || b.id)::uuid, b.balance_id, 'balance', '<', 1000, 100000,
       'Low balance alert', 'https://hooks.example.com/blnk/' || b.id
FROM blnk.balances b WHERE b.id % 10 = 0;

INSERT INTO blnk.api_keys (api_key_id, key_hash, name, owner_id, scopes, expires_at, last_used_at, last_used_ip, is_revoked)
SELECT 'api_' || md5('k' || i)::uuid, encode(sha256(('key-' || i)::bytea), 'hex'), 'service key ' || i,
       'owner_' || (i % 3), ARRAY['transactions:read', 'balances:read'] || CASE WHEN i % 2 = 0 THEN ARRAY['transactions:write'] ELSE '{}'::text[] END,
       timestamptz '2027-01-01 00:00:00+00', timestamptz '2025-06-01 00:00:00+00' + i * interval '1 hour',
       ('10.20.' || (i % 250) || '.' || (i % 250 + 1))::inet, i % 9 = 0
FROM generate_series(1, 20) i;

INSERT INTO blnk.reconciliations (reconciliation_id, upload_id, status, matched_transactions, unmatched_transactions, started_at, completed_at)
SELECT 'rec_' || md5('r' || i)::uuid, 'upl_' || i, CASE WHEN i < 5 THEN 'completed' ELSE 'in_progress' END,
       0, 0, timestamptz '2025-06-01 00:00:00+00' + i * interval '1 day',
       CASE WHEN i < 5 THEN timestamptz '2025-06-01 01:00:00+00' + i * interval '1 day' END
FROM generate_series(1, 5) i;

INSERT INTO blnk.matching_rules (rule_id, name, description, criteria)
VALUES ('rule_amount', 'Exact amount', 'Amount and currency match', '[{"field": "amount", "operator": "equals"}]'),
       ('rule_reference', 'Reference', 'References match', '[{"field": "reference", "operator": "equals"}]'),
       ('rule_date', 'Date window', 'Within one day', '[{"field": "date", "operator": "within", "days": 1}]');

INSERT INTO blnk.external_transactions (id, amount, reference, currency, description, date, source, upload_id)
SELECT 'ext_' || t.id, t.amount, t.reference, t.currency, 'bank statement line', t.created_at, 'bank_statement', 'upl_' || (t.id % 5 + 1)
FROM blnk.transactions t WHERE t.id % 20 = 0 AND t.status = 'APPLIED';

INSERT INTO blnk.matches (external_transaction_id, internal_transaction_id, reconciliation_id, amount, date)
SELECT e.id, t.transaction_id, 'rec_' || md5('r' || (t.id % 5 + 1))::uuid, t.amount, t.created_at
FROM blnk.external_transactions e JOIN blnk.transactions t ON e.id = 'ext_' || t.id;

INSERT INTO blnk.lineage_outbox (transaction_id, lineage_type, payload, status, attempts, created_at, processed_at)
SELECT t.transaction_id, 'balance_update', jsonb_build_object('source', t.source, 'destination', t.destination, 'amount', t.amount),
       CASE WHEN t.id % 30 = 0 THEN 'pending' ELSE 'done' END, 1, t.created_at,
       CASE WHEN t.id % 30 <> 0 THEN t.created_at + interval '1 second' END
FROM blnk.transactions t WHERE t.id % 10 = 0;

DROP TABLE gen_params;

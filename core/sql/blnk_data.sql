-- Fills the Blnk-shaped schema server-side; {n} is the number of transactions, {chained} how many
-- of them the hash chain has sealed (Blnk's chainer runs behind), {last_migration} the newest
-- Blnk migration applied. {chain_hash}, {chain_columns} and {chain_values} are filled in for
-- Blnk 0.15 (empty, or NULL, for older versions).
-- Ids are deterministic (md5 of a counter cast to uuid) so rows can refer to each other by
-- arithmetic instead of joins. Amounts are in minor units (precision 100), as Blnk stores them:
-- every APPLIED transaction moves precise_amount from one balance to another of the same
-- currency, so per currency the balances add up to zero.
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

INSERT INTO blnk.balances (balance_id, indicator, currency, ledger_id, identity_id, created_at,
    meta_data)
SELECT 'bln_' || md5('b' || i)::uuid,
       CASE WHEN i <= 4 THEN '@World' || currencies[(i - 1) % 4 + 1] END,
       currencies[(i - 1) % 4 + 1],
       'ldg_' || md5('l' || (i % 5 + 1))::uuid,
       CASE WHEN i % 10 <> 0 THEN 'idt_' || md5('i' || ((i - 1) % identities + 1))::uuid END,
       timestamptz '2024-06-02 00:00:00+00' + i * interval '1 minute',
       jsonb_build_object('purpose', (ARRAY['wallet', 'savings', 'settlement', 'fees'])[i % 4 + 1])
FROM gen_params, generate_series(1, balances) i;

INSERT INTO blnk.gorp_migrations (id, applied_at)
SELECT m, timestamptz '2024-02-23 00:00:00+00' + o * interval '1 day'
FROM unnest(ARRAY['1708676327.sql', '1711640389.sql', '1712395973.sql', '1712660388.sql',
    '1712749737.sql', '1713790634.sql', '1714213688.sql', '1715045770.sql', '1721227454.sql',
    '1721922047.sql', '1723454727.sql', '1736998493.sql', '1740373196.sql', '1740373636.sql',
    '1740486534.sql', '1740493523.sql', '1741007609.sql', '1741695343.sql', '1741885443.sql',
    '1742098199.sql', '1742098787.sql', '1742099489.sql', '1742100059.sql', '1742101752.sql',
    '1742400213.sql', '1748323024.sql', '1765154909.sql', '1766887982.sql', '1768315575.sql',
    '1768746546.sql', '1769343506.sql', '1770461873.sql', '1770611011.sql', '1780963200.sql',
    '1780963300.sql', '1781162328.sql', '1781162329.sql']) WITH ORDINALITY AS x(m, o)
WHERE m <= '{last_migration}';

-- Transactions come in blocks of 20 rows, as Blnk writes them (row i has position p = (i-1) % 20):
--   0-9    APPLIED directly (skip_queue);
--   10, 11 QUEUED, then its APPLIED copy (reference "<ref>_q", parent_transaction the queued one);
--   12, 13 QUEUED, then its REJECTED copy;
--   14-16  QUEUED inflight, its INFLIGHT copy, then the APPLIED commit of the inflight one;
--   17-19  QUEUED inflight, its INFLIGHT copy, then the VOID of it — except every 7th block,
--          whose inflight stays open (its row 19 is a direct APPLIED one).
-- A copy or settlement carries its group's currency, balances and amount; a block cut short by
-- {n} leaves queued transactions unprocessed and inflight ones open, as a live ledger has.
-- Transaction g's currency is c = g % 4; its source and destination are two different balances
-- of that currency (balance numbers 4k + c + 1).
INSERT INTO blnk.transactions (id, transaction_id, parent_transaction, source, destination,
    reference, amount, precise_amount, precision, currency, description, status, hash,
    allow_overdraft, inflight, skip_queue, atomic, created_at, scheduled_for,
    inflight_expiry_date, effective_date, meta_data{chain_columns})
SELECT x.i, x.transaction_id, x.parent_transaction, x.source, x.destination, x.reference,
       x.amount, x.precise_amount, 100, x.currency, x.description, x.status, x.hash,
       x.allow_overdraft, x.inflight, x.skip_queue, x.atomic, x.created_at, x.scheduled_for,
       x.inflight_expiry_date, x.created_at, x.meta_data{chain_values}
FROM (
    SELECT t.*, {chain_hash} AS running_hash
    FROM (
        SELECT g.i,
               'txn_' || md5('t' || g.i)::uuid AS transaction_id,
               CASE WHEN r.parent_i IS NOT NULL THEN 'txn_' || md5('t' || r.parent_i)::uuid END
                   AS parent_transaction,
               'bln_' || md5('b' || (4 * a.src + a.c + 1))::uuid AS source,
               'bln_' || md5('b' || (4 * a.dst + a.c + 1))::uuid AS destination,
               CASE r.kind WHEN 'copy' THEN 'ref_' || r.grp || '_q'
                           WHEN 'commit' THEN 'ref_' || r.grp || '_commit'
                           WHEN 'void' THEN 'ref_' || r.grp || '_void'
                           ELSE 'ref_' || g.i END AS reference,
               trim_scale(a.precise / 100.0) AS amount,
               a.precise AS precise_amount,
               currencies[a.c + 1] AS currency,
               'Payment ' || r.grp || ' for order ' || (r.grp * 31 % 100000) AS description,
               r.status,
               encode(sha256(('txn-' || g.i)::bytea), 'hex') AS hash,
               r.grp % 3 = 0 AS allow_overdraft,
               r.inflight,
               r.kind = 'direct' AS skip_queue,
               r.grp % 11 = 0 AS atomic,
               ts.created_at,
               CASE WHEN r.status = 'INFLIGHT' THEN ts.created_at + interval '2 hours' END
                   AS inflight_expiry_date,
               CASE WHEN r.kind = 'queued' AND r.grp % 40 = 10 THEN ts.created_at + interval '1 day' END
                   AS scheduled_for,
               jsonb_build_object(
                   'customer_ref', 'C' || (r.grp % 5000),
                   'channel', (ARRAY['card', 'bank_transfer', 'wallet', 'ussd'])[r.grp % 4 + 1],
                   'invoice', 'INV-' || r.grp,
                   'tags', jsonb_build_array('batch-' || (g.i / 1000),
                                             CASE WHEN g.i % 2 = 0 THEN 'even' ELSE 'odd' END))
                 || CASE WHEN r.inflight THEN '{"inflight": true}'::jsonb ELSE '{}'::jsonb END
                 || CASE WHEN r.kind = 'copy'
                         THEN jsonb_build_object('QUEUED_PARENT_TRANSACTION',
                                                 'txn_' || md5('t' || r.parent_i)::uuid)
                         ELSE '{}'::jsonb END AS meta_data
        FROM gen_params,
        generate_series(1, n) AS g(i)
        CROSS JOIN LATERAL (SELECT (g.i - 1) % 20 AS p, (g.i - 1) / 20 % 7 = 3 AS open_block) AS q
        CROSS JOIN LATERAL (
            SELECT CASE WHEN q.p < 10 OR (q.p = 19 AND q.open_block) THEN 'direct'
                        WHEN q.p IN (10, 12, 14, 17) THEN 'queued'
                        WHEN q.p IN (11, 13, 15, 18) THEN 'copy'
                        WHEN q.p = 16 THEN 'commit'
                        ELSE 'void' END AS kind,
                   CASE WHEN q.p < 10 OR (q.p = 19 AND q.open_block) THEN 'APPLIED'
                        WHEN q.p IN (10, 12, 14, 17) THEN 'QUEUED'
                        WHEN q.p IN (11, 16) THEN 'APPLIED'
                        WHEN q.p = 13 THEN 'REJECTED'
                        WHEN q.p IN (15, 18) THEN 'INFLIGHT'
                        ELSE 'VOID' END AS status,
                   CASE WHEN q.p < 10 OR (q.p = 19 AND q.open_block) OR q.p IN (10, 12, 14, 17)
                        THEN g.i WHEN q.p IN (11, 13, 15, 18) THEN g.i - 1 ELSE g.i - 2 END AS grp,
                   CASE WHEN q.p < 10 OR (q.p = 19 AND q.open_block) OR q.p IN (10, 12, 14, 17)
                        THEN NULL ELSE g.i - 1 END AS parent_i,
                   q.p IN (14, 15, 17, 18) AS inflight
        ) AS r
        CROSS JOIN LATERAL (
            SELECT (r.grp % 4)::int AS c,
                   (r.grp * 2654435761 % 4294967296) % (balances / 4) AS src,
                   ((r.grp * 2654435761 % 4294967296) % (balances / 4)
                     + 1 + (r.grp * 40503 % 65537) % (balances / 4 - 1)) % (balances / 4) AS dst,
                   ((r.grp * 7919 % 100000) + 1)::numeric AS precise
        ) AS a
        -- Blnk's created_at: a timestamp without time zone, to the microsecond; some with no
        -- fraction, some with trailing zeros, so the chain's RFC 3339 form is exercised.
        CROSS JOIN LATERAL (
            SELECT timestamp '2025-01-01 00:00:00' + g.i * interval '13 seconds'
                   + CASE WHEN g.i % 10 = 0 THEN 0
                          WHEN g.i % 10 = 1 THEN (g.i % 9 + 1) * 100000
                          ELSE g.i * 7919 % 1000000 END * interval '1 microsecond' AS created_at
        ) AS ts
    ) AS t
) AS x
ORDER BY x.i;
SELECT setval(pg_get_serial_sequence('blnk.transactions', 'id'), (SELECT max(id) FROM blnk.transactions));

INSERT INTO blnk.transaction_journal (transaction_id, balance_id, direction, amount, currency, created_at)
SELECT t.transaction_id, CASE d.direction WHEN 'debit' THEN t.source ELSE t.destination END,
       d.direction, t.precise_amount, t.currency, t.created_at
FROM blnk.transactions t CROSS JOIN (VALUES ('debit'), ('credit')) AS d(direction)
WHERE t.status = 'APPLIED';

-- Balances follow from the transactions as Blnk moves them: APPLIED ones (commits included)
-- debit the source and credit the destination; an INFLIGHT one holds its amount in the
-- inflight columns until a commit (APPLIED) or VOID child settles it. The version trigger
-- fires once per balance.
UPDATE blnk.balances b
SET credit_balance = f.credit, debit_balance = f.debit, balance = f.credit - f.debit,
    inflight_credit_balance = f.inflight_credit, inflight_debit_balance = f.inflight_debit,
    inflight_balance = f.inflight_credit - f.inflight_debit
FROM (SELECT v.balance_id, sum(v.credit) AS credit, sum(v.debit) AS debit,
             sum(v.inflight_credit) AS inflight_credit, sum(v.inflight_debit) AS inflight_debit
      FROM (SELECT t.source, t.destination,
                   CASE WHEN t.status = 'APPLIED' THEN t.precise_amount ELSE 0 END AS applied,
                   CASE WHEN t.status = 'INFLIGHT' AND settled.parent_transaction IS NULL
                        THEN t.precise_amount ELSE 0 END AS held
            FROM blnk.transactions t
            LEFT JOIN (SELECT DISTINCT parent_transaction FROM blnk.transactions
                       WHERE status IN ('APPLIED', 'VOID') AND parent_transaction IS NOT NULL)
                AS settled ON settled.parent_transaction = t.transaction_id) AS t
      CROSS JOIN LATERAL (VALUES (t.source, 0, t.applied, 0, t.held),
                                 (t.destination, t.applied, 0, t.held, 0))
          AS v(balance_id, credit, debit, inflight_credit, inflight_debit)
      GROUP BY v.balance_id) f
WHERE b.balance_id = f.balance_id;

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

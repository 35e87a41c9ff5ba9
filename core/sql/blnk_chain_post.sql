-- Blnk 0.15 after the data load: chain_state points at the last chained transaction (as the
-- chainer leaves it), and the chain's indexes (sql/1781162328.sql, sql/1781162329.sql).
UPDATE blnk.chain_state s
SET last_seq = h.chain_seq, head_hash = h.chain_hash, updated_at = h.created_at + interval '30 seconds'
FROM (SELECT chain_seq, chain_hash, created_at FROM blnk.transactions
      WHERE chain_seq IS NOT NULL ORDER BY chain_seq DESC LIMIT 1) h
WHERE s.chain_key = 'global';

CREATE UNIQUE INDEX idx_transactions_chain_seq ON blnk.transactions (chain_seq)
    WHERE chain_seq IS NOT NULL;
CREATE INDEX idx_transactions_unchained ON blnk.transactions (id) WHERE chain_seq IS NULL;

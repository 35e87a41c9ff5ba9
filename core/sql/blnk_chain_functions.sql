-- The hash chain as Blnk's chainer computes it (model.ComputeChainHash), as a running aggregate
-- in this session's temporary schema: blnk_chain(start, canonical) OVER (ORDER BY seq) gives
-- each row's chain_hash = lowercase hex SHA-256 of "previous hash|canonical fields", the first
-- row linking to ``start`` (the genesis hash, or the hash a re-chained stretch continues from).
-- ``canonical`` is transaction_id|source|destination|amount|precise_amount|currency|status|
-- reference|created_at (RFC 3339, UTC, nanoseconds without trailing zeros), NULLs as ''.
CREATE FUNCTION pg_temp.blnk_chain_step(head text, start text, canonical text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN encode(sha256(convert_to(coalesce(head, start) || '|' || canonical, 'UTF8')), 'hex');
END;
$$;
CREATE AGGREGATE pg_temp.blnk_chain(text, text) (SFUNC = pg_temp.blnk_chain_step, STYPE = text);

-- created_at as Go's time.Time.UTC().Format(time.RFC3339Nano) writes it; for a timestamp
-- without time zone (Blnk's column type), whose wall clock lib/pq reads as UTC.
CREATE FUNCTION pg_temp.blnk_rfc3339(ts timestamp) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT to_char(ts, 'YYYY-MM-DD"T"HH24:MI:SS')
        || coalesce('.' || nullif(rtrim(to_char(ts, 'US'), '0'), ''), '') || 'Z'
$$;

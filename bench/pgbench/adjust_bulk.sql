-- The raw limit of S6: one bulk of 1,000 adjustments per transaction, each on a customer drawn
-- at random from -D customers=N (cus_bench_0000 … N-1; one can come up more than once), on
-- plain tables of the service's shape with none of the service around it: lock the bulk's
-- balance rows in customer order (so that concurrent bulks cannot deadlock), append the
-- 1,000 ledger rows with every column the service writes (type, reference, the NULL
-- metadata, expires_at, reverses and pending_id, and a SHA-256 hash of the previous tip's
-- hash and the row's fields, as hex), and set each balance row to its new tip. The items are
-- the same in both statements: a hash of the item's number and the transaction's seed.
-- (pgbench takes `:name` for a variable even in a string: no `:` is followed by a letter.)
-- Each row's hash starts from its customer's tip before the bulk: a chain within one bulk
-- would take one statement per row, and this is the same amount of hashing.
\set seed random(0, 2000000000)
BEGIN;
SELECT count(*)
  FROM (SELECT 1
          FROM loyalty_balances
         WHERE customer_id IN (
               SELECT 'cus_bench_'
                      || lpad(((hashint4(i + :seed)::bigint & 2147483647) % :customers)::text,
                              4, '0')
                 FROM generate_series(1, 1000) AS i)
         ORDER BY customer_id
           FOR UPDATE) AS locked;
WITH items AS (
    SELECT i, (hashint4(i + :seed)::bigint & 2147483647) % :customers AS c
      FROM generate_series(1, 1000) AS i
), numbered AS (
    SELECT items.i, items.c, b.customer_id,
           b.last_seq + row_number() OVER w AS seq,
           b.balance_hundredths + 100 * row_number() OVER w AS balance_after,
           coalesce(b.last_hash, repeat('0', 64)) AS previous_hash,
           greatest(floor(extract(epoch FROM statement_timestamp()) * 1000)::bigint,
                    coalesce(b.updated_at_ms, 0)) AS created_at_ms,
           row_number() OVER w = count(*) OVER (PARTITION BY items.c) AS tip
      FROM items
      JOIN loyalty_balances AS b ON b.customer_id = 'cus_bench_' || lpad(items.c::text, 4, '0')
    WINDOW w AS (PARTITION BY items.c ORDER BY items.i)
), identified AS (
    SELECT numbered.*,
           'adj_' || lpad(created_at_ms::text, 13, '0') || lpad(c::text, 5, '0')
           || lpad(seq::text, 8, '0') AS id,
           'bench-' || seq AS reference
      FROM numbered
), hashed AS (
    SELECT identified.*,
           encode(sha256(convert_to(previous_hash
               || '{"balance_after":"' || (balance_after / 100) || '","created_at":"'
               || created_at_ms || '","created_by":"user_bench","customer_id":"' || customer_id
               || '","delta":"1","expires_at":' || 'null,"id":"' || id
               || '","metadata":' || 'null,"pending_id":' || 'null,"reason":"bench","reference":"'
               || reference || '","reverses":' || 'null,"type":"adjustment"}', 'UTF8')), 'hex')
           AS hash
      FROM identified
), inserted AS (
    INSERT INTO loyalty_adjustments (id, customer_id, seq, type, delta_hundredths,
                                     balance_after_hundredths, reason, reference, metadata,
                                     expires_at_ms, reverses, pending_id, created_at_ms,
                                     created_by, hash)
    SELECT id, customer_id, seq, 'adjustment', 100, balance_after, 'bench', reference, NULL,
           NULL, NULL, NULL, created_at_ms, 'user_bench', hash
      FROM hashed
)
UPDATE loyalty_balances AS b
   SET balance_hundredths = h.balance_after,
       last_seq = h.seq,
       last_adjustment_id = h.id,
       updated_at_ms = h.created_at_ms,
       last_hash = h.hash
  FROM hashed AS h
 WHERE h.tip AND b.customer_id = h.customer_id;
END;

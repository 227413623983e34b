-- The raw limit of S1 (and S3 with -D customers=1): one adjustment per transaction on plain
-- tables of the service's shape (created by its own migrations in a scratch database),
-- with none of the service around it: lock and update the balance row, append the
-- ledger row. Run with -M prepared and -D customers=N (cus_bench_0000 … N-1).
\set c random(0, :customers - 1)
BEGIN;
UPDATE loyalty_balances
   SET balance_hundredths = balance_hundredths + 100,
       last_seq = last_seq + 1,
       last_adjustment_id = 'adj_'
           || lpad(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint::text, 13, '0')
           || lpad(:c::text, 5, '0') || lpad((last_seq + 1)::text, 8, '0'),
       updated_at_ms = floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint
 WHERE customer_id = 'cus_bench_' || lpad(:c::text, 4, '0')
RETURNING customer_id, last_seq, balance_hundredths, last_adjustment_id, updated_at_ms
\gset
INSERT INTO loyalty_adjustments (id, customer_id, seq, delta_hundredths,
                                 balance_after_hundredths, reason, created_at_ms, created_by)
VALUES (:last_adjustment_id, :customer_id, :last_seq, 100,
        :balance_hundredths, 'bench', :updated_at_ms, 'user_bench');
END;

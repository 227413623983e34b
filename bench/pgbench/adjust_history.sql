-- The raw limit of S2: adjust.sql, then the customer's last 20 adjustments, newest first,
-- read in the same transaction (as include_history=true does).
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
SELECT id, delta_hundredths, reason, balance_after_hundredths, created_at_ms
  FROM loyalty_adjustments
 WHERE customer_id = :customer_id
 ORDER BY seq DESC
 LIMIT 20;
END;

-- The raw limit of S4: read one customer's balance row, as GET /admin/loyalty/points/{id}.
\set c random(0, :customers - 1)
SELECT balance_hundredths, last_seq, updated_at_ms
  FROM loyalty_balances
 WHERE customer_id = 'cus_bench_' || lpad(:c::text, 4, '0');

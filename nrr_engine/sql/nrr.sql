-- Family and naive NRR/GRR of one view and window as plain SQL (DESIGN §5), for an org that outgrows one machine:
-- run it where the data already lives (the customer's warehouse, Spark SQL, DuckDB, PostgreSQL, SQLite >= 3.25).
--
-- Inputs: the two history tables of the state store, Parquet files in state/nrr-history/ (the ledger's
-- history_files table names the current ones; one membership file per view), read or loaded as they are:
--   arr_history(account_id, start_month, end_month, arr_units)   runs of equal monthly ARR, months 'YYYY-MM'
--                                                                 inclusive, ARR in units of 1/10,000
--   membership(view, account_id, start_month, end_month, root_id) the family root each run recorded for an
--                                                                 account from start_month (end_month NULL: open)
-- Parameters: :view, :m0 and :m1 ('YYYY-MM': the window's start and end month, e.g. 2025-10 and 2026-10 for the
-- trailing twelve months to 2026-10). Families are those of m1 ("restated"): the segment covering m1, else the
-- first one recorded after it. One row per level (family, naive), money in units: divide by 10000 at output.
-- tests/test_scale_out_sql.py runs this file on the demo org's history files (DuckDB, SQLite) and compares it
-- with `report nrr`.
WITH account_arr AS (
  SELECT account_id,
         SUM(CASE WHEN start_month <= :m0 AND end_month >= :m0 THEN arr_units ELSE 0 END) AS arr0,
         SUM(CASE WHEN start_month <= :m1 AND end_month >= :m1 THEN arr_units ELSE 0 END) AS arr1
  FROM arr_history
  GROUP BY account_id
),
with_family AS (   -- the account's segments that reach m1; the one covering m1 first, else the earliest after it
  SELECT a.account_id, a.arr0, a.arr1, m.root_id,
         ROW_NUMBER() OVER (PARTITION BY a.account_id
                            ORDER BY CASE WHEN m.start_month <= :m1 THEN 0 ELSE 1 END, m.start_month) AS pick
  FROM account_arr a
  LEFT JOIN membership m
    ON m.view = :view AND m.account_id = a.account_id AND (m.end_month IS NULL OR m.end_month >= :m1)
),
grouped AS (
  SELECT 'family' AS level, COALESCE(root_id, account_id) AS grp, SUM(arr0) AS f0, SUM(arr1) AS f1
  FROM with_family WHERE pick = 1
  GROUP BY COALESCE(root_id, account_id)
  UNION ALL
  SELECT 'naive' AS level, account_id AS grp, arr0 AS f0, arr1 AS f1 FROM account_arr
)
SELECT level,
       SUM(CASE WHEN f0 > 0 THEN f0 ELSE 0 END) AS start_units,
       SUM(CASE WHEN f0 > 0 THEN f1 ELSE 0 END) AS end_units,
       SUM(CASE WHEN f0 > 0 AND f1 > f0 THEN f1 - f0 ELSE 0 END) AS expansion_units,
       SUM(CASE WHEN f0 > 0 AND f1 > 0 AND f1 < f0 THEN f0 - f1 ELSE 0 END) AS contraction_units,
       SUM(CASE WHEN f0 > 0 AND f1 = 0 THEN f0 ELSE 0 END) AS churn_units,
       SUM(CASE WHEN f0 = 0 AND f1 > 0 THEN f1 ELSE 0 END) AS new_business_units
FROM grouped
GROUP BY level
ORDER BY level;

"""The §7 invariants as SQL fragments: the one definition diagnostics and the notifier's /status share.

Parameters: $1 hours, $2 grace seconds, $3 the terminal statuses. Aliases: m (a sent
signal's telegram_messages row), i (its order_intents row), f (a failure message row).
The predicates are spelled exactly as the partial indexes of migration 0002, so the
planner can use them.
"""

FAILURE_NOTICE_WINDOW_SECONDS = 300

SENT_SIGNAL = "m.blocked = false AND (m.message LIKE '%BUY SIGNAL%' OR m.message LIKE '%SELL SIGNAL%')"
FAILURE_NOTICE = "f.blocked = false AND f.message LIKE '%ORDER FAILED%'"
IN_WINDOW = "m.timestamp >= now() - $1::int * interval '1 hour'"
AGED = "(m.timestamp < now() - $2::int * interval '1 second')"
TERMINAL = "coalesce(i.status = ANY($3::text[]), false)"
DECIDED = "coalesce(i.decided_at, i.updated_at)"
NOTICE_NEAR_DECISION = f"""
    EXISTS (SELECT 1 FROM telegram_messages f
            WHERE f.signal_id = i.signal_id AND {FAILURE_NOTICE}
              AND f.timestamp BETWEEN {DECIDED} - interval '{FAILURE_NOTICE_WINDOW_SECONDS} seconds'
                                  AND {DECIDED} + interval '{FAILURE_NOTICE_WINDOW_SECONDS} seconds')"""
FAILED_IN_WINDOW = f"""
    i.status = 'ORDER_FAILED'
    AND {DECIDED} >= now() - $1::int * interval '1 hour'
    AND {DECIDED} < now() - $2::int * interval '1 second'
    AND NOT {NOTICE_NEAR_DECISION}"""

# Over a CTE `sent` with columns status, terminal, aged, decision_type, reason_code.
SENT_COUNTS = """count(*) AS total_signals,
       count(*) FILTER (WHERE status = 'ORDER_PLACED') AS placed,
       count(*) FILTER (WHERE status = 'ORDER_FAILED') AS failed,
       count(*) FILTER (WHERE status = 'DEDUP_SKIPPED') AS dedup,
       count(*) FILTER (WHERE status = 'BLOCKED_LIVE_TRADING') AS blocked,
       count(*) FILTER (WHERE NOT terminal AND NOT aged) AS in_flight,
       count(*) FILTER (WHERE NOT terminal AND aged) AS missing_intent,
       count(*) FILTER (WHERE aged AND (decision_type IS NULL OR reason_code IS NULL)) AS null_decisions"""

"""JSON arrows bind tighter than AND and = in every SQL ocrcat passes on (DuckDB 1.5's grammar does not)."""

import duckdb
import pytest

from ocrcat.catalog.sqltext import bind_json_arrows


@pytest.mark.parametrize("sql, expected", [
    ("source = 'chartqa' AND meta->>'origin' = 'human'", "source = 'chartqa' AND (meta->>'origin') = 'human'"),
    ("meta->'a'->>'b' = 'x'", "((meta->'a')->>'b') = 'x'"),
    ("json_extract(meta, '$.a')->>'b' = '1'", "(json_extract(meta, '$.a')->>'b') = '1'"),
    ("x AND (meta)->>'c' = '2'", "x AND ((meta)->>'c') = '2'"),
    ("samples.meta->>0 = 'x' -- meta->>'z'", "(samples.meta->>0) = 'x' -- meta->>'z'"),
    ("meta::JSON->>'a' = 'b'", "(meta::JSON->>'a') = 'b'"),
    ("'it''s meta->>''x''' = text", "'it''s meta->>''x''' = text"),  # inside a string: untouched
    ("list_transform([1, 2], x -> x + 1)", "list_transform([1, 2], x -> x + 1)"),  # a lambda: untouched
])
def test_rewrite(sql, expected):
    assert bind_json_arrows(sql) == expected


def test_the_documented_predicate_means_what_it_says():
    con = duckdb.connect()
    con.execute("""CREATE TABLE samples AS SELECT * FROM (VALUES
        ('chartqa', '{"origin": "human", "n": 2}'::JSON), ('chartqa', '{"origin": "machine", "n": 3}'::JSON),
        ('plotqa', '{"origin": "human"}'::JSON)) t(source, meta)""")
    where = "source = 'chartqa' AND meta->>'origin' = 'human' AND meta->'n' = '2'"
    assert con.execute(f"SELECT count(*) FROM samples WHERE {bind_json_arrows(where)}").fetchone()[0] == 1

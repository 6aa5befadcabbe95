"""Mixtures: weights and text share keep their promise, plans are pinned and thread-independent,
bad definitions are refused before anything is written, presets and the CLI agree with the view."""

from __future__ import annotations

import json
import math
import re
import warnings
from collections import Counter

import pytest
from typer.testing import CliRunner

from ocrcat.catalog import Catalog
from ocrcat.cli import app
from ocrcat.ingest.runner import ingest
from ocrcat.mix.mixtures import (
    MixtureError,
    MixtureWarning,
    create_mixture,
    describe_mixture,
    drop_mixture,
    get_mixture,
    list_mixtures,
    load_toml,
    plan_key,
    plan_sql,
)

TEN = {"docbank": 23, "olmocr": 17, "llava_cc3m": 31, "plotqa": 12, "chartqa": 29, "figureqa": 41,
       "pubtables": 14, "latex_formulas": 19, "mathwriting": 11, "smoltalk": 37}


@pytest.fixture
def ten(catalog_dir, add_synthetic_rows):
    """A catalog with made-up rows of all ten sources."""
    with Catalog(catalog_dir) as cat:
        for source, rows in TEN.items():
            add_synthetic_rows(cat.con, source, rows)
        yield cat


def plan(cat: Catalog, name: str) -> list[tuple]:
    return cat.con.execute(f"SELECT position, component, repeat, sample_id FROM mix_{name}").fetchall()


def test_weights_and_text_share_keep_their_promise(ten):
    comps = [("docs", "source = 'docbank'", 2), ("charts", "source = 'chartqa'", 0.5),
             ("figs", "source = 'figureqa'", 1.5), ("plots", "source = 'plotqa'", 1)]
    create_mixture(ten, "m", comps, text_share=0.1, seed=5)
    rows = plan(ten, "m")
    assert [r[0] for r in rows] == list(range(len(rows)))  # plan order, no gaps
    per = {c: Counter() for c in ("docs", "charts", "figs", "plots", "text")}
    for _, component, repeat, sid in rows:
        per[component][(sid, repeat)] += 1
    ids = {s: {r[0] for r in ten.con.execute("SELECT sample_id FROM samples WHERE source = ?", [s]).fetchall()}
           for s in TEN}
    # weight 2: every docbank row exactly twice, as repeats 0 and 1
    assert set(per["docs"]) == {(i, r) for i in ids["docbank"] for r in (0, 1)}
    # weight 1: every row once
    assert set(per["plots"]) == {(i, 0) for i in ids["plotqa"]}
    # weight 0.5 over 29 rows: a seeded half, floor(14.5 + 0.5) = 15 distinct rows, once each
    assert len(per["charts"]) == 15 and {r for _, r in per["charts"]} == {0}
    assert {i for i, _ in per["charts"]} < ids["chartqa"]
    # weight 1.5 over 41 rows: all once plus a seeded half (floor(20.5 + 0.5) = 21) again
    assert {i for i, r in per["figs"] if r == 0} == ids["figureqa"]
    assert len([1 for _, r in per["figs"] if r == 1]) == 21
    assert all(n == 1 for c in per.values() for n in c.values())
    # text share: T = round(0.1 / 0.9 * V) of 37 text rows, without replacement while they last
    vision = 2 * 23 + 15 + 41 + 21 + 12
    text = len(per["text"])
    assert text == math.floor(0.1 / 0.9 * vision + 0.5) == 15
    assert abs(text - 0.1 * (vision + text)) <= 1
    assert {r for _, r in per["text"]} == {0} and {i for i, _ in per["text"]} <= ids["smoltalk"]
    described = describe_mixture(ten, "m")
    assert {c["name"]: (c["rows"], c["promised"], c["realised"]) for c in described["components"]} == {
        "docs": (23, 46, 46), "charts": (29, 15, 15), "figs": (41, 62, 62), "plots": (12, 12, 12),
        "text": (37, 15, 15)}
    assert described["total"] == len(rows)
    text_row = next(c for c in described["components"] if c["name"] == "text")
    assert text_row["intended_share"] == 0.1 and abs(text_row["realised_share"] - 0.1) < 1 / len(rows)


def text_positions(cat: Catalog, name: str) -> tuple[int, int]:
    return cat.con.execute(f"SELECT count(*) FILTER (WHERE kind = 'text'), count(*) FROM mix_{name}").fetchone()


def test_text_share_counts_the_text_rows_components_bring(ten):
    """A component over every train row also takes the train text rows: the share draws only the rest
    (it drew 0.2/0.8 of all other entries, and text was 33 % of the plan, shown as 20 %)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        create_mixture(ten, "share", [("everything", "split = 'train'", 1)], text_share=0.2)
    text, total = text_positions(ten, "share")
    assert abs(text - 0.2 * total) <= 0.5
    brought = ten.con.execute("SELECT count(*) FROM samples WHERE split = 'train' AND kind = 'text'").fetchone()[0]
    described = describe_mixture(ten, "share")
    everything, drawn = described["components"]
    assert everything["text_rows"] == brought and drawn["realised"] == text - brought == drawn["promised"] > 0
    assert drawn["realised_share"] == text / total and drawn["intended_share"] == 0.2
    assert abs(everything["realised_share"] - everything["intended_share"]) <= 1 / total
    assert described["warnings"] == []
    # A fractional weight over text rows: which of them it brings is the seeded draw, counted from the plan.
    create_mixture(ten, "frac", [("c", "source = 'chartqa'", 1), ("t", "source = 'smoltalk'", 0.3)], text_share=0.4)
    text, total = text_positions(ten, "frac")
    assert abs(text - 0.4 * total) <= 0.5
    assert {c["name"]: c["realised"] for c in describe_mixture(ten, "frac")["components"]} == {
        "c": 29, "t": 11, "text": math.floor(0.4 / 0.6 * 40 - 11 / 0.6 + 0.5)}
    # --split: counted within the split
    train = describe_mixture(ten, "share", split="train")
    assert all(c["realised"] == c["promised"] for c in train["components"])


def test_components_with_more_text_than_the_share_draw_none_and_say_so(ten):
    comps = [("charts", "source = 'chartqa'", 1), ("talk", "source = 'smoltalk'", 1)]
    with pytest.warns(MixtureWarning, match=r"component\(s\) talk of over alone bring 37 text rows \(kind = 'text'\), "
                                            r"56.06% of their positions, more than the text share of 20.00%"):
        create_mixture(ten, "over", comps, text_share=0.2)
    assert text_positions(ten, "over") == (37, 66)
    described = describe_mixture(ten, "over")
    drawn = described["components"][-1]
    assert (drawn["promised"], drawn["realised"]) == (0, 0) and drawn["realised_share"] == 37 / 66
    assert [c["intended_share"] for c in described["components"]] == [29 / 66, 37 / 66, 0.2]
    assert len(described["warnings"]) == 1
    ten.close()
    out = CliRunner().invoke(app, ["mix", "show", "over", "--catalog", str(ten.dir)])
    assert out.exit_code == 0 and "56.06%" in out.stdout and "warning: component(s) talk of over" in out.stderr, out.output


def test_text_share_cycles_through_text_rows_when_they_run_out(ten):
    create_mixture(ten, "talky", [("docs", "source = 'docbank'", 4)], text_share=0.75, seed=1)
    text = Counter(sid for _, c, _, sid in plan(ten, "talky") if c == "text")
    total = math.floor(0.75 / 0.25 * 92 + 0.5)  # 276 draws from 37 rows: 7 full passes and 17 more
    assert sum(text.values()) == total == 276
    assert len(text) == 37 and sorted(Counter(text.values()).items()) == [(7, 20), (8, 17)]


def test_fractional_counts_within_one_row(ten):
    for weight in (0.1, 0.33, 0.5, 0.77, 1.25, 2.5, 3.9):
        create_mixture(ten, "f", [("figs", "source = 'figureqa'", weight)], seed=3, replace=True)
        n = ten.con.execute("SELECT count(*) FROM mix_f").fetchone()[0]
        assert abs(n - weight * 41) <= 0.5, weight


def _golden_catalog(path):
    cat = Catalog(path)
    rows = [(i, "a", "vision") for i in range(1, 11)] + [(100 + i, "b", "vision") for i in range(1, 7)] \
        + [(200 + i, "t", "text") for i in range(1, 6)]
    cat.con.executemany(
        "INSERT INTO samples (sample_id, source, split, source_key, kind, text, ingest_run) "
        "VALUES (?, ?, 'train', CAST(? AS VARCHAR), ?, 'x', 0)",
        [(sid, source, sid, kind) for sid, source, kind in rows],
    )
    return cat


def test_golden_plan(catalog_dir):
    """The first positions of a small plan, pinned: a change of hash, formatting or order shows here."""
    assert plan_key("pick", 0, "a", 1) == 0xD1D38581AB3E3EC2  # `printf pick:0:a:1 | md5sum`, first 8 bytes
    with _golden_catalog(catalog_dir) as cat:
        create_mixture(cat, "g", [("a", "source = 'a'", 2), ("b", "source = 'b'", 0.5)], text_share=0.2, seed=42)
        got = [(c, r, s) for _, c, r, s in plan(cat, "g")]
    assert got[:10] == [
        ("text", 1, 201), ("a", 1, 3), ("a", 1, 6), ("b", 0, 104), ("a", 1, 1),
        ("a", 0, 2), ("text", 0, 205), ("a", 0, 4), ("a", 0, 6), ("a", 1, 8),
    ]
    # 20 + round(3) + round(0.25 * 23) = 6 text draws from 5 rows: one row comes round again
    assert len(got) == 29 and sorted(s for c, r, s in got if c == "text") == [201, 201, 202, 203, 204, 205]


def test_plan_matches_its_python_twin(catalog_dir):
    """The SQL key is MD5 of the decimal parts joined by ':' — checked against hashlib row by row."""
    with _golden_catalog(catalog_dir) as cat:
        create_mixture(cat, "g", [("a", "source = 'a'", 2), ("b", "source = 'b'", 0.5)], seed=7)
        entries = [(c, r, s) for _, c, r, s in plan(cat, "g")]
        chosen_b = {s for c, _, s in entries if c == "b"}
    assert entries == sorted(entries, key=lambda e: (plan_key(7, *e), e))
    ranked_b = sorted(range(101, 107), key=lambda s: (plan_key("pick", 7, "b", s), s))
    assert chosen_b == set(ranked_b[:3])


def test_plan_is_equal_with_1_and_4_threads(catalog_dir, add_synthetic_rows):
    """Large enough (≈300k rows, several DuckDB row groups) for the work to be split across threads."""
    with Catalog(catalog_dir) as cat:
        add_synthetic_rows(cat.con, "figureqa", 200_000)
        add_synthetic_rows(cat.con, "chartqa", 90_000)
        add_synthetic_rows(cat.con, "smoltalk", 20_000)
        create_mixture(cat, "big", [("f", "source = 'figureqa'", 1.5), ("c", "source = 'chartqa'", 0.3)],
                       text_share=0.05, seed=11)
        sql = f"SELECT md5(string_agg(component || repeat || ':' || sample_id, ',' ORDER BY position)), count(*) " \
              f"FROM ({plan_sql(get_mixture(cat, 'big'))})"
        results = []
        for threads in (1, 4, 1):
            cat.con.execute(f"SET threads = {threads}")
            results.append(cat.con.execute(sql).fetchone())
            results.append(tuple(cat.con.execute(
                "SELECT md5(string_agg(component || repeat || ':' || sample_id, ',')), count(*) "
                "FROM (SELECT * FROM mix_big LIMIT 50000)").fetchone()))
    assert results[0][1] == 300_000 + 27_000 + round(0.05 / 0.95 * 327_000)
    assert results[0] == results[2] == results[4] and results[1] == results[3] == results[5]


def test_seed_changes_the_order_but_not_the_counts(ten):
    comps = [("docs", "source = 'docbank'", 1.5), ("charts", "source = 'chartqa'", 1)]
    create_mixture(ten, "s1", comps, seed=1)
    create_mixture(ten, "s2", comps, seed=2)
    p1, p2 = plan(ten, "s1"), plan(ten, "s2")
    assert Counter(c for _, c, _, _ in p1) == Counter(c for _, c, _, _ in p2)
    assert [r[1:] for r in p1] != [r[1:] for r in p2]


def test_view_has_position_component_repeat_and_sample_columns(ten):
    create_mixture(ten, "v", [("docs", "source = 'docbank'", 1)])
    columns = [d[0] for d in ten.con.execute("SELECT * FROM mix_v LIMIT 1").description]
    sample_columns = [d[0] for d in ten.con.execute("SELECT * FROM samples LIMIT 1").description]
    assert columns == ["position", "component", "repeat"] + sample_columns
    got = ten.con.execute("SELECT source, text FROM mix_v").fetchall()
    assert len(got) == 23 and {s for s, _ in got} == {"docbank"}


@pytest.mark.parametrize(
    ("predicate", "message"),
    [
        ("source = ", "not a valid filter"),
        ("sourcee = 'chartqa'", "not a valid filter"),
        ("source = 'nowhere'", "matches no rows"),
        ("true; DROP TABLE samples", "not a valid filter"),
        ("true) UNION SELECT 1 --", "not a valid filter"),
        ("true) UNION SELECT 1 WHERE (true", "not a valid filter"),
    ],
)
def test_bad_predicates_are_refused_before_anything_is_written(ten, predicate, message):
    with pytest.raises(MixtureError, match=message):
        create_mixture(ten, "bad", [("ok", "source = 'chartqa'", 1), ("x", predicate, 1)])
    assert list_mixtures(ten) == []
    assert ten.con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = 'mix_bad'").fetchone()[0] == 0
    assert ten.con.execute("SELECT count(*) FROM samples").fetchone()[0] == sum(TEN.values())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "Bad-Name"}, "name"),
        ({"components": []}, "no components"),
        ({"components": [("a", "true", 1), ("a", "true", 2)]}, "twice"),
        ({"components": [("a", "true", 0)]}, "weight must be a number > 0"),
        ({"components": [("a", "true", -1)]}, "weight must be a number > 0"),
        ({"components": [("a", "true", 1e20)]}, "at most 1000000"),
        ({"components": [("a", "true", 1e6 + 1)]}, "at most 1000000"),
        ({"components": [("a", "true", math.inf)]}, "weight must be a number > 0"),
        ({"text_share": 1.0}, "fraction"),
        ({"text_share": 0.2, "text_predicate": "source = 'chartqa' AND kind = 'text'"}, "no text rows"),
        ({"components": [("text", "true", 1)], "text_share": 0.1}, "reserved"),
    ],
)
def test_bad_definitions_are_refused(ten, kwargs, message):
    args = {"name": "bad", "components": [("a", "source = 'chartqa'", 1)]} | kwargs
    with pytest.raises(MixtureError, match=message):
        create_mixture(ten, **args)
    assert list_mixtures(ten) == []


@pytest.mark.parametrize(
    ("predicate", "message"),
    [
        ("source = 'chartqa' AND random() < 0.5", "calls random(), which DuckDB marks volatile"),
        ("source = 'chartqa' AND RANDOM() < 0.5", "calls random()"),
        ("sample_id IN (SELECT sample_id FROM samples ORDER BY random() LIMIT 5)", "calls random()"),
        ("source = 'chartqa' AND uuid() IS NOT NULL", "calls uuid()"),
        ("source = 'chartqa' AND now() > TIMESTAMP '2000-01-01'", "calls now(), which DuckDB marks consistent"),
        ("source = 'chartqa' AND current_timestamp > TIMESTAMP '2000-01-01'", "calls current_timestamp(), which reads"),
        ("sample_id IN (SELECT sample_id FROM samples USING SAMPLE 50%)", "USING SAMPLE"),
    ],
)
def test_predicates_whose_rows_change_between_reads_are_refused(ten, predicate, message):
    """SPEC 4: the plan is a pure function of (seed, rows, definition), never random()."""
    with pytest.raises(MixtureError, match=re.escape(message)):
        create_mixture(ten, "rnd", [("a", predicate, 1)])
    with pytest.raises(MixtureError, match="the plan must be the same on every read"):
        create_mixture(ten, "rnd", [("a", "source = 'docbank'", 1)], text_share=0.1, text_predicate=predicate)
    assert list_mixtures(ten) == []


def test_pure_predicates_that_only_look_volatile_are_accepted(ten):
    create_mixture(ten, "ok", [("a", "source = 'chartqa' AND text <> 'random() now()' -- uuid()", 1),
                               ("b", "source = 'docbank' AND abs(hash(sample_id)) % 2 = 0", 1)])
    assert [m["name"] for m in list_mixtures(ten)] == ["ok"]


def test_a_weight_too_large_for_the_plan_is_refused_in_a_file_and_on_the_command_line(ten, tmp_path):
    """1e20 was stored, then every read of the plan failed with an INT128 -> INT64 conversion error."""
    path = tmp_path / "mix.toml"
    path.write_text('[huge.components]\ncharts = { predicate = "source = \'chartqa\'", weight = 1e20 }\n')
    with pytest.raises(MixtureError, match="at most 1000000"):
        load_toml(ten, path)
    ten.close()
    out = CliRunner().invoke(app, ["mix", "create", "w1", "-C", "a=source = 'chartqa':1e20", "--catalog", str(ten.dir)])
    assert out.exit_code == 2 and out.stderr.startswith("error: component 'a' of w1: weight must be") \
        and out.stderr.count("\n") == 1, out.output


def test_a_component_that_gets_no_positions_is_a_warning(ten):
    comps = [("tiny", "source = 'chartqa'", 0.001), ("docs", "source = 'docbank'", 1)]
    with pytest.warns(MixtureWarning, match=r"component tiny of w2 gets no positions now: weight 0.001 × 29 "
                                            r"matching rows is less than half a row; give it a weight of at least 0.0345"):
        create_mixture(ten, "w2", comps)
    described = describe_mixture(ten, "w2")
    assert [c["realised"] for c in described["components"]] == [0, 23]
    assert len(described["warnings"]) == 1 and "tiny" in described["warnings"][0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the weight the warning suggests gives one position
        create_mixture(ten, "w3", [("few", "source = 'chartqa'", 1 / 29)])
    assert describe_mixture(ten, "w3")["components"][0]["realised"] == 1
    ten.close()
    runner = CliRunner()
    out = runner.invoke(app, ["mix", "create", "w4", "-C", "a=source = 'chartqa':0.001", "--catalog", str(ten.dir)])
    assert out.exit_code == 0 and out.stderr.startswith("warning: component a of w4 gets no positions"), out.output
    out = runner.invoke(app, ["mix", "show", "w4", "--catalog", str(ten.dir)])
    assert out.exit_code == 0 and "warning: component a of w4 gets no positions" in out.stderr, out.output


def test_create_refuses_an_existing_name_unless_replace(ten):
    create_mixture(ten, "m", [("a", "source = 'chartqa'", 1)])
    with pytest.raises(MixtureError, match="exists"):
        create_mixture(ten, "m", [("a", "source = 'plotqa'", 1)])
    create_mixture(ten, "m", [("a", "source = 'plotqa'", 1)], replace=True)
    assert ten.con.execute("SELECT DISTINCT source FROM mix_m").fetchall() == [("plotqa",)]


def test_drop_removes_definition_and_view(ten):
    create_mixture(ten, "m", [("a", "source = 'chartqa'", 1)])
    drop_mixture(ten, "m")
    assert list_mixtures(ten) == []
    assert ten.con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = 'mix_m'").fetchone()[0] == 0
    with pytest.raises(MixtureError, match="no mixture 'm'"):
        drop_mixture(ten, "m")


def test_presets_load_and_keep_the_data_plan(ten):
    loaded = load_toml(ten)
    assert [d["name"] for d in loaded] == ["stage1", "stage2"]
    s1, s2 = describe_mixture(ten, "stage1"), describe_mixture(ten, "stage2")
    expected1 = {s: n * (2 if s in ("docbank", "olmocr") else 1) for s, n in TEN.items() if s != "smoltalk"}
    assert {c["name"]: c["realised"] for c in s1["components"]} == expected1
    assert s1["text_share"] == 0
    got2 = {c["name"]: c["realised"] for c in s2["components"]}
    assert got2 == expected1 | {"text": math.floor(0.1 / 0.9 * sum(expected1.values()) + 0.5)}
    assert abs(got2["text"] - 0.1 * s2["total"]) <= 1
    # rerunnable: loading again replaces, it does not duplicate
    load_toml(ten, names=["stage2"])
    assert [m["name"] for m in list_mixtures(ten)] == ["stage1", "stage2"]


def test_a_toml_file_with_one_bad_mixture_writes_nothing(ten, tmp_path):
    path = tmp_path / "mix.toml"
    path.write_text(
        '[good]\nseed = 3\n[good.components]\ncharts = { predicate = "source = \'chartqa\'", weight = 1.5 }\n'
        '[bad]\n[bad.components]\nx = { predicate = "nosuchcolumn = 1", weight = 1 }\n'
    )
    with pytest.raises(MixtureError, match="nosuchcolumn"):
        load_toml(ten, path)
    assert list_mixtures(ten) == []
    path.write_text("[broken\n")
    with pytest.raises(MixtureError, match="not valid TOML"):
        load_toml(ten, path)
    path.write_text("[m.components]\ncharts = 2\n")
    with pytest.raises(MixtureError, match="needs a predicate"):
        load_toml(ten, path)
    path.write_text("[m]\nseed = 1\n")
    with pytest.raises(MixtureError, match="needs a components table"):
        load_toml(ten, path)
    with pytest.raises(MixtureError, match="no mixture file"):
        load_toml(ten, tmp_path / "missing.toml")
    assert list_mixtures(ten) == []


def test_split_applies_the_definition_within_a_split(ten):
    load_toml(ten, names=["stage2"])
    train = describe_mixture(ten, "stage2", split="train")
    for c in train["components"]:
        assert c["realised"] == c["promised"]
    rows = dict(ten.con.execute(f"SELECT component, count(*) FROM ({plan_sql(get_mixture(ten, 'stage2'), 'train')}) "
                                "GROUP BY 1").fetchall())
    assert rows["docbank"] == 2 * ten.con.execute(
        "SELECT count(*) FROM samples WHERE source = 'docbank' AND split = 'train'").fetchone()[0]


def test_predicates_over_meta_on_an_ingested_source(catalog_dir, sample_mirror_factory):
    with Catalog(catalog_dir) as cat:
        ingest(cat, "chartqa", mirror=sample_mirror_factory("chartqa"))
        human = cat.con.execute("SELECT count(*) FROM samples WHERE meta->>'origin' = 'human'").fetchone()[0]
        assert 0 < human < cat.con.execute("SELECT count(*) FROM samples").fetchone()[0]
        create_mixture(cat, "human", [("h", "source = 'chartqa' AND meta->>'origin' = 'human'", 2)])
        assert cat.con.execute("SELECT count(*), count(DISTINCT sample_id) FROM mix_human").fetchone() == (2 * human, human)


def test_cli_mix_commands_and_sql_agree(ten, tmp_path):
    ten.close()
    runner = CliRunner()
    env = {"OCRCAT_HOME": str(ten.dir)}

    def run(*args, code=0):
        result = runner.invoke(app, list(args), env=env)
        assert result.exit_code == code, result.output
        return result.output

    run("mix", "load", "--preset")
    shown = json.loads(run("mix", "show", "stage2", "--json"))
    by_source = json.loads(run("sql", "SELECT source, count(*) AS n FROM mix_stage2 GROUP BY 1", "--json"))
    component_of = {c["name"]: c for c in shown["components"]}
    assert {r["source"]: r["n"] for r in by_source} == {
        ("smoltalk" if name == "text" else name): c["realised"] for name, c in component_of.items()}
    run("mix", "create", "mine", "-C", "h=source = 'chartqa' AND image_width::INTEGER > 0:1.5",
        "-C", "d=source = 'docbank'", "--text-share", "0.2", "--seed", "9")
    mine = json.loads(run("mix", "show", "mine", "--json"))
    assert [(c["name"], c["weight"]) for c in mine["components"]] == [("h", 1.5), ("d", 1.0), ("text", None)]
    assert "mine" in run("mix", "list")
    assert "matches no rows" in run("mix", "create", "x", "-C", "a=source = 'zzz':1", code=2)
    assert "not NAME=PREDICATE:WEIGHT" in run("mix", "create", "x", "-C", "nothing", code=2)
    assert "no mixture 'nope'" in run("mix", "show", "nope", code=2)
    assert "give a TOML file or --preset" in run("mix", "load", code=2)
    run("mix", "drop", "mine")
    assert "mine" not in run("mix", "list")
